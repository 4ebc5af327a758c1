"""The suite's one smoke sweep (the ``smoke_sweep`` fixture in tests/conftest.py) and what
the tests that start sweeps share."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SECRET = "test-key-that-must-not-leak-8f3a"
# Simulated: the id that wandb.sweep() would return online (it needs a W&B server; the tests
# have no network). The runs join it exactly as they join a Sweep created online.
SIMULATED_SWEEP_ID = "simulated-sweep-7q2x"


def sweep_env() -> dict[str, str]:
    # W&B stays on (offline): a restored sweep brings back its pickled W&B callback too.
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_API_KEY")}
    return {**env, "PYTHONUNBUFFERED": "1"}


def run_smoke_sweep(storage: Path) -> tuple[int, Path, str]:
    """One smoke sweep (4 trials with the seed recipe, tiny model, refit, guard set) whose
    first point's trial fails after epoch 1, run the way a user runs it:
    ``python sweeps/run.py --smoke-test``, its output kept. W&B writes offline files with an
    API key in the environment (which must land nowhere) and a sweep id to join.
    Returns (exit code, the sweep's folder, its output)."""
    from sweeps.trainable import FAULT_ENV

    done = subprocess.run(
        [sys.executable, "sweeps/run.py", "--smoke-test", "--name", "smoke"]
        + ["--storage_path", str(storage), "--wandb_sweep_id", SIMULATED_SWEEP_ID],
        cwd=REPO,
        # The smoke sweep's first point (after the seed recipe) fails after its first epoch.
        env={
            **sweep_env(),
            FAULT_ENV: "learning_rate=0.001:1",
            "WANDB_API_KEY": SECRET,
            "WANDB_MODE": "offline",
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    return done.returncode, storage / "smoke", done.stdout + done.stderr
