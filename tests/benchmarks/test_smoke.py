"""Benchmarks are not tests, but their smoke modes run here so they cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def smoke(script: str, results: Path, *extra: str, timeout: int = 300) -> str:
    done = subprocess.run(
        [
            sys.executable,
            f"benchmarks/{script}.py",
            "--smoke",
            "--results-dir",
            str(results),
            *extra,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = (results / f"{script}.md").read_text()
    assert f"command: `python benchmarks/{script}.py --smoke" in text
    assert "- machine: " in text and "- wall time of the whole benchmark: " in text
    return text


def test_eval_speed_smoke(tmp_path):
    text = smoke("eval_speed", tmp_path)
    assert "speed-up:" in text and "SequentialEvaluator" in text


def test_throughput_smoke(tmp_path):
    text = smoke("throughput", tmp_path)
    assert "| training | CPU: " in text or "| training | GPU: " in text
    assert "Training: **" in text and "pairs/s" in text


def test_quality_smoke(tmp_path):
    # A sweep's best/metrics.json as sweeps/report.py writes it (only "config" is read).
    from trainers.config import TrainConfig

    best = tmp_path / "sweep" / "best"
    best.mkdir(parents=True)
    config = TrainConfig(
        model="bundled:tiny",
        max_pairs=800,
        epochs=1,
        batch_size=16,
        learning_rate=1e-3,
        matryoshka_weights=(2.0, 1.0, 1.0, 0.5),
    )
    (best / "metrics.json").write_text(json.dumps({"config": config.to_dict()}))
    text = smoke("quality", tmp_path / "results", "--sweep", str(tmp_path / "sweep"))
    for label in ("base", "seed recipe", "sweep's best"):
        assert f"{label} MAP@100" in text and f"{label} NDCG@10" in text
    assert "Matryoshka retention" in text and "no package on both sides, checked" in text
    assert "**met**" in text or "**not met**" in text


@pytest.mark.slow
def test_sweep_overhead_smoke(tmp_path):
    text = smoke("sweep_overhead", tmp_path, "--no-wandb", timeout=600)
    assert "wall-time ratio, sweep / direct:" in text
    assert "**Time to the first training step:" in text


@pytest.mark.slow
def test_serving_smoke(tmp_path):
    text = smoke("serving", tmp_path, timeout=600)
    assert "| clients | requests | req/s | p50 ms" in text
    assert "### ONNX backend vs torch" in text
