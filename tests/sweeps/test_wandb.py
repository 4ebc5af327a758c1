"""The W&B Sweep side, without a W&B server: the translated sweep config, and publish's refusals.

What needs a server (creating a Sweep, attaching runs, tagging after upload) is not tested
here; tests/sweeps/test_sweep.py checks the offline run files a sweep writes (sweep id, job
types, tags) with a simulated sweep id.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import sweeps
from sweeps import wandb_sweep

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "sweeps" / "configs").glob("*.yaml"))

# W&B's documented sweep configuration (docs: "Sweep configuration options"; the schema of the
# `sweeps` package, which wandb 0.31 does not ship): the keys and values a config may use.
TOP_LEVEL = {
    "name",
    "description",
    "method",
    "metric",
    "parameters",
    "run_cap",
    "program",
    "command",
    "early_terminate",
    "project",
    "entity",
}
METHODS = {"bayes", "random", "grid", "custom"}
DISTRIBUTIONS = {
    "constant": {"value"},
    "categorical": {"values"},
    "int_uniform": {"min", "max"},
    "uniform": {"min", "max"},
    "log_uniform_values": {"min", "max"},
    "q_uniform": {"min", "max", "q"},
    "q_log_uniform_values": {"min", "max", "q"},
    "normal": {"mu", "sigma"},
}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_sweep_translates_to_a_valid_wandb_sweep_config(path):
    spec = wandb_sweep.sweep_spec(sweeps.load_config(path))
    # wandb's own checks, as far as wandb 0.31 ships them (no schema validator is installed):
    # its Optuna scheduler's translation raises on an unknown distribution or bad bounds, and
    # the client-side check before an upload.
    from wandb.apis.public.sweeps import _validate_config_and_fill_distribution
    from wandb.sdk.sweeps.scheduler.optuna import search_space_from_sweep_config, sweep_directions

    assert _validate_config_and_fill_distribution(spec) == spec
    space = search_space_from_sweep_config(spec["parameters"])
    assert set(space) == {p.key for p in sweeps.load_config(path).search}
    assert sweep_directions(spec) == ["maximize"]
    # and the documented schema's keys and values
    assert set(spec) <= TOP_LEVEL and spec["method"] in METHODS
    assert set(spec["metric"]) == {"name", "goal"} and spec["metric"]["goal"] == "maximize"
    for name, parameter in spec["parameters"].items():
        assert name.replace("_", "a").isalnum()
        allowed = DISTRIBUTIONS[parameter["distribution"]]
        assert set(parameter) - {"distribution"} == allowed, (name, parameter)
        if "min" in parameter:
            assert parameter["min"] < parameter["max"]


def test_the_translation_keeps_each_distribution():
    config = sweeps.default_config()
    spec = wandb_sweep.sweep_spec(config)["parameters"]
    assert spec["learning_rate"] == {"distribution": "log_uniform_values", "min": 1e-5, "max": 3e-4}
    assert spec["batch_size"] == {"distribution": "categorical", "values": [16, 32]}
    assert spec["weight_profile"]["distribution"] == "uniform"


def publish(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "sweeps/run.py", "publish", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def no_key_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}


def test_publish_refuses_without_anything_to_publish(tmp_path):
    (tmp_path / "empty" / "wandb").mkdir(parents=True)
    done = publish(str(tmp_path / "empty"), env={**no_key_env(), "WANDB_API_KEY": "x"})
    assert done.returncode == 2 and "nothing to publish" in done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    done = publish(str(tmp_path / "missing"), env=no_key_env())
    assert done.returncode == 2 and "not a sweep folder" in done.stderr


def test_publish_refuses_without_an_api_key(tmp_path):
    run = tmp_path / "sweep" / "wandb" / "wandb" / "offline-run-20260101_000000-abc"
    run.mkdir(parents=True)
    (run / "run-abc.wandb").write_bytes(b":W&B")
    (tmp_path / "sweep" / "wandb" / "sweep.yaml").write_text("name: sweep\n")
    done = publish(str(tmp_path / "sweep"), env=no_key_env())
    assert done.returncode == 2 and "WANDB_API_KEY" in done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1


def test_a_sweep_without_wandb_does_not_import_it():
    done = subprocess.run(
        [sys.executable, "-c", "import sys, sweeps.tune_run; print('wandb' in sys.modules)"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.strip() == "False", done.stderr[-2000:]
