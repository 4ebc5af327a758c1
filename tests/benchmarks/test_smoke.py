"""Benchmarks are not tests, but their smoke modes run here so they cannot rot."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_eval_speed_smoke(tmp_path):
    done = subprocess.run(
        [sys.executable, "benchmarks/eval_speed.py", "--smoke", "--results-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    text = (tmp_path / "eval_speed.md").read_text()
    assert "speed-up:" in text and "SequentialEvaluator" in text
    assert "command: `python benchmarks/eval_speed.py --smoke" in text
