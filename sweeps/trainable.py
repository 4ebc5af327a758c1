"""The Tune trainable: one trial = one ``trainers.train`` run, reporting after every epoch.

A top-level function that builds everything it needs inside (closures over models or
trainers do not pickle: Ray issues #31059, #15439). It re-implements nothing: training and
evaluation are trainers', this only maps Tune's sampled values to a trainers config and the
per-epoch metrics (and checkpoint) back to Tune.
"""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sweeps.config import SweepConfig

# Test hook: "key=value[:epoch]" in the driver's environment makes the trials whose sampled
# `key` equals `value` raise (after that epoch, if given), the way an out-of-memory or NaN
# trial would. Used by the failure-isolation test, e.g. learning_rate=0.001:1. The driver
# passes it to the trials (workers of an already running Ray would not see the variable).
FAULT_ENV = "MATRYOSHKA_SWEEP_INJECT_FAULT"
OBJECTIVE = "objective"


def run_trial(
    sampled: dict[str, Any],
    *,
    sweep: SweepConfig,
    baseline: dict[str, float],
    fault: str | None = None,
) -> None:
    from ray import tune

    from trainers.train import train

    # Ray relays worker output line by line: progress bars become floods of lines. Tune's
    # status table and W&B are the progress view of a sweep.
    os.environ["TQDM_DISABLE"] = "1"
    config = sweep
    context = tune.get_context()
    trial_config = config.trial_config(
        sampled, output_dir=os.path.join(context.get_trial_dir(), "model")
    )
    fault_epoch = _injected_fault(fault, sampled)

    def on_epoch(epoch: int, metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        report = {**metrics, OBJECTIVE: metrics[config.objective], "epoch": epoch}
        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(report, checkpoint=checkpoint)
        if fault_epoch is not None and epoch >= fault_epoch:
            raise RuntimeError(f"injected fault ({FAULT_ENV}) after epoch {epoch}")

    if fault_epoch == 0:
        raise RuntimeError(f"injected fault ({FAULT_ENV}) before training")
    resume_from = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        # A real local copy: training goes on long after any as_directory() context.
        resume_from = checkpoint.to_directory(tempfile.mkdtemp(prefix="resume-"))
    train(trial_config, on_epoch, resume_from=resume_from, baseline=baseline)


def _injected_fault(spec: str | None, sampled: dict[str, Any]) -> int | None:
    if not spec:
        return None
    condition, _, epoch = spec.partition(":")
    key, _, value = condition.partition("=")
    if (
        key not in sampled
        or str(sampled[key]) != value
        and _as_float(sampled[key]) != _as_float(value)
    ):
        return None
    return int(epoch) if epoch else 0


def _as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
