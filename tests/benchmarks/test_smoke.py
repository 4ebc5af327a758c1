"""Benchmarks are not tests, but their smoke modes run here so they cannot rot."""

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


@pytest.mark.slow
def test_quality_smoke(tmp_path, smoke_sweep):
    code, sweep, output = smoke_sweep  # the session's smoke sweep (tests/conftest.py)
    assert code == 0, output[-3000:]
    text = smoke("quality", tmp_path, "--sweep", str(sweep), timeout=900)
    assert "| target | result | figures |" in text
    for target in (
        "at full dim",
        "seed recipe at the same budget",
        ">= base, every dim",
        "guard set",
    ):
        assert target in text
    assert text.count("**met**") + text.count("**not met**") == 4
    assert "seed recipe at the refit's budget" in text


@pytest.mark.slow
def test_sweep_overhead_smoke(tmp_path):
    text = smoke("sweep_overhead", tmp_path, "--no-wandb", timeout=600)
    assert "wall-time ratio, sweep / direct:" in text
    assert "**Time to the first training step:" in text


@pytest.mark.slow
def test_serving_smoke(tmp_path):
    text = smoke("serving", tmp_path, timeout=600)
    assert "| clients | server | req/s (median) | p50 ms" in text
    assert "our default backend (`--backend auto`)" in text and "| onnx-int8 |" in text
    assert "Serve / in-process encode of the same backend" in text and "x (rounds: " in text
