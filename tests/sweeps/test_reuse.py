"""Reused trial processes (reuse_actors) give the same metrics as fresh ones, on a real Ray."""

from __future__ import annotations

import pytest

import sweeps

pytestmark = pytest.mark.slow

POINTS = [
    {"learning_rate": 1e-3, "batch_size": 16},
    {"learning_rate": 3e-3, "batch_size": 8},
]


def one_at_a_time(tmp_path, name: str, reuse: bool):
    config = sweeps.load_config(
        sweeps.DEFAULT_CONFIG,
        {
            "name": name,
            "storage_path": str(tmp_path),
            "model": "bundled:tiny",
            "matryoshka_dims": [384, 64],
            "max_pairs": 32,
            "eval_size": 40,
            "test_size": 0,
            "max_seq_length": 32,
            "epochs": 2,
            "matryoshka_weights": None,
            "num_samples": len(POINTS),
            "max_concurrent_trials": 1,
            "wandb": False,
            "reuse_actors": reuse,
            "onnx": False,
            "seed_recipe": False,
            "grace_period": 2,  # no early stopping: every trial reports both epochs
        },
    )
    from sweeps.space import Param

    config = config.replace(
        search=(
            Param(key="learning_rate", kind="choice", args=(1e-3, 3e-3, 5e-4)),
            Param(key="batch_size", kind="choice", args=(8, 16)),
        ),
        first_points=tuple(POINTS),
        refit=None,
        guard=None,
    )
    summary = sweeps.run_sweep(config, address="local")
    assert summary.best_dir is not None, summary.text
    return {
        (t.config["learning_rate"], t.config["batch_size"]): t.reports
        for t in sweeps.trial_results(summary.out)
    }


def test_reused_processes_give_the_same_metrics_as_fresh_ones(tmp_path):
    fresh = one_at_a_time(tmp_path, "fresh", reuse=False)
    reused = one_at_a_time(tmp_path, "reused", reuse=True)
    assert set(fresh) == set(reused) == {(p["learning_rate"], p["batch_size"]) for p in POINTS}
    # One process ran every trial with reuse, one process per trial without.
    assert len({r[0]["pid"] for r in reused.values()}) == 1
    assert len({r[0]["pid"] for r in fresh.values()}) == len(POINTS)
    for point, reports in fresh.items():
        assert [r["epoch"] for r in reports] == [r["epoch"] for r in reused[point]] == [1, 2]
        for before, after in zip(reports, reused[point], strict=True):
            for key in ("dim_384_cosine_map@100", "dim_64_cosine_map@100", "objective"):
                assert after[key] == pytest.approx(before[key], abs=1e-6), (point, key)
