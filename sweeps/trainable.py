"""The Tune trainable: one trial = one ``trainers.train`` run, reporting after every epoch.

A top-level function that builds everything it needs inside (closures over models or
trainers do not pickle: Ray issues #31059, #15439). It re-implements nothing: training and
evaluation are trainers', this only maps Tune's sampled values to a trainers config and the
per-epoch metrics (and checkpoint) back to Tune.
"""

from __future__ import annotations

import logging
import shutil
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
SELECTION = "selection"
FINAL = "final_epoch"  # on a trial's last report: it ran to its end, no scheduler stopped it


def run_trial(
    sampled: dict[str, Any],
    *,
    sweep: SweepConfig,
    baseline: dict[str, float],
    fault: str | None = None,
) -> None:
    from ray import tune

    from trainers.train import train

    config = sweep
    share = fresh_process_state(tune.get_context())
    # Tune says "Checkpoint successfully created" at every report: the epoch line says enough.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    # The trainer's own output folder stays out of Tune's trial folder, which Tune syncs while
    # the trainer is still writing and deleting its checkpoints there. A sweep keeps the
    # checkpoints Tune persists; the trainer's final save is thrown away with the folder.
    scratch = tempfile.mkdtemp(prefix="trial-")
    # No reload of the best epoch at the end: the sweep picks it from Tune's checkpoints.
    trial_config = config.trial_config(sampled, output_dir=scratch, load_best_model_at_end=False)
    fault_epoch = _injected_fault(fault, sampled)
    fewest = config.epochs[0] if not config.is_seed(sampled) else 1

    def on_epoch(epoch: int, metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        objective = metrics[config.objective]
        report = {
            **metrics,
            OBJECTIVE: objective,  # what ASHA's rungs and Optuna compare, at every epoch
            # what picks the trial's best epoch (and the checkpoints kept): only the epochs the
            # sweep may choose count
            SELECTION: objective if epoch >= fewest else -1.0,
            "epoch": epoch,
            "schedule_epochs": trial_config.epochs,  # every sampled trial: the budget
            FINAL: epoch >= trial_config.epochs,
        }
        # The trial's one line per epoch (its bars are off: Ray would relay them line by line).
        dims = ", ".join(
            f"{d}: {metrics[f'dim_{d}_cosine_map@100']:.4f}" for d in trial_config.matryoshka_dims
        )
        print(
            f"epoch {epoch}/{trial_config.epochs}: {config.objective} "
            f"{report[OBJECTIVE]:.4f} (MAP@100 by dim {dims})",
            flush=True,
        )
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
        resume_from = checkpoint.to_directory(tempfile.mkdtemp(prefix="resume-", dir=scratch))
    try:
        train(trial_config, on_epoch, resume_from=resume_from, baseline=baseline, progress=False)
    except Exception as err:
        if type(err).__name__ == "OutOfMemoryError" and 0 < share < 1:
            raise RuntimeError(
                f"the trial outgrew its share of the GPU (gpus_per_trial={share:g}, capped to "
                f"that fraction of its memory): raise gpus_per_trial or lower batch_size"
            ) from err
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def fresh_process_state(context) -> float:
    """Each trial starts clean, also in a process that ran trials before (reuse_actors):
    garbage collected, CUDA's cache emptied and its memory capped to the trial's GPU share,
    torch's threads set to the trial's CPUs. Returns the GPU share (0: none)."""
    import gc

    import torch

    resources = context.get_trial_resources().required_resources
    gc.collect()
    share = float(resources.get("GPU", 0.0))
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        # Several trials per GPU: each may use its share of the memory and no more, so one
        # trial's growth fails that trial (with the message above), not its neighbours.
        torch.cuda.set_per_process_memory_fraction(min(1.0, share) if share > 0 else 1.0)
    torch.set_num_threads(max(1, round(float(resources.get("CPU", 1.0)))))
    return share


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
