"""The search: Ray Tune + Optuna over a Matryoshka training config, and the export of its best.

The public API, what benchmarks and other code use (the rest of the package is internal):

    import sweeps
    config = sweeps.default_config(max_pairs=400)          # sweeps/configs/local.yaml + overrides
    config = sweeps.load_config("my-sweep.yaml", {"num_samples": 8})
    summary = sweeps.run_sweep(config, address="local")    # trials, report, runs/<name>/best
    for trial in sweeps.trial_results(summary.out): ...    # every trial's reports, from disk

Importing this package does not import Ray; ``run_sweep`` and ``trial_results`` do.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sweeps.config import SweepConfig
    from sweeps.report import SearchHistory, Summary, TrialReports

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "local.yaml"


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> SweepConfig:
    """A sweep YAML with overrides (sweep keys, or trainers keys that fix a value), checked."""
    from sweeps.config import load

    return load(path, overrides)


def default_config(**overrides: Any) -> SweepConfig:
    """The embedded default sweep (sweeps/configs/local.yaml) with ``overrides``."""
    return load_config(DEFAULT_CONFIG, overrides)


def output_dir(config: SweepConfig) -> Path:
    """Where a sweep's report, best model and W&B files go on this machine (runs/<name>/)."""
    from sweeps.tune_run import local_dir

    return local_dir(config)


def run_sweep(
    config: SweepConfig,
    *,
    baseline: Mapping[str, float] | None = None,
    resume: bool = False,
    address: str | None = None,
    stop_deadline_s: float | None = None,
) -> Summary:
    """Run (or, with ``resume``, continue) the sweep and export its best model.

    ``baseline``: the base model's metrics if the caller has them already (else one Ray task
    evaluates it). ``address``: the Ray cluster to join; ``"local"`` starts a private one.
    ``stop_deadline_s``: after Ctrl-C or SIGTERM, end the *process* this many seconds later
    if the stop has not finished (the command line's choice; a notebook's kernel would go too).
    """
    from sweeps.tune_run import run_sweep as run

    return run(
        config, resume=resume, address=address, baseline=baseline, stop_deadline_s=stop_deadline_s
    )


def trial_results(out: str | Path) -> list[TrialReports]:
    """Every trial of the sweep in ``out`` (runs/<name>/) with all its reports."""
    from sweeps.report import read_trials

    return read_trials(Path(out))


def search_history(out: str | Path) -> SearchHistory:
    """The sampler the sweep in ``out`` ran, and what each trial told it (COMPLETE, PRUNED)."""
    from sweeps.report import read_search

    return read_search(Path(out))
