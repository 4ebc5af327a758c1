"""Which Optuna sampler a sweep runs, and why (no Ray here: the report states the choice).

Which sampler (``sampler: auto``). A model-based sampler needs observations to learn from:
Optuna's TPE and GP samplers sample at random for their first 10 trials by default, and the
first points (the seed recipe) count towards those. With n sampled trials in d searched keys:
- n < 2 d: ``qmc`` (scrambled Sobol): too few points to model anything, and a low-discrepancy
  sequence covers the space more evenly than random draws;
- else, with no more than 8 keys: ``gp`` (Gaussian process, Optuna 5's GPSampler), the
  stronger of the two at tens of trials;
- else ``tpe`` (multivariate, constant liar for parallel trials).
The model-based samplers start learning after max(2, min(10, n // 4)) random trials.
"""

from __future__ import annotations

import warnings

from sweeps.config import SweepConfig


def choose_sampler(config: SweepConfig) -> tuple[str, str]:
    """The sampler ``config`` runs, and why (for the report)."""
    sampled = config.num_samples - len(config.first_points)
    dims = len(config.search)
    if config.sampler != "auto":
        return config.sampler, "set in the sweep config"
    if sampled < 2 * dims:
        return "qmc", (
            f"auto: {sampled} sampled trials for {dims} searched keys (fewer than 2 per key): "
            "too few to model, so a scrambled Sobol sequence spreads them evenly"
        )
    if dims <= 8:
        return "gp", f"auto: {sampled} sampled trials for {dims} searched keys"
    return "tpe", f"auto: {sampled} sampled trials for {dims} searched keys (more than 8)"


def startup_trials(config: SweepConfig) -> int:
    return max(2, min(10, (config.num_samples - len(config.first_points)) // 4))


def make_sampler(name: str, config: SweepConfig):
    """The seeded Optuna sampler ``name`` (OptunaSearch ignores its own seed given a sampler)."""
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(
            seed=config.seed,
            n_startup_trials=startup_trials(config),
            multivariate=True,
            constant_liar=True,
        )
    if name == "gp":
        return optuna.samplers.GPSampler(seed=config.seed, n_startup_trials=startup_trials(config))
    if name == "qmc":
        with warnings.catch_warnings():  # "QMCSampler is experimental": it is, and it is used
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=config.seed)
    return optuna.samplers.RandomSampler(seed=config.seed)
