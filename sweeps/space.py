"""The search space: one searched key and its distribution, and every translation of it.

A ``Param`` is what a sweep YAML's ``search:`` block says about one key
(``learning_rate: {loguniform: [1.0e-5, 3.0e-4]}``). Tune, Optuna and W&B each spell the same
distribution differently; each translation lives here, once:

- ``tune_space``: Tune's param_space (what the trials are sampled from);
- ``optuna_distributions``: Optuna's distributions (hyper-parameter importance in the report);
- ``wandb_parameters``: a W&B Sweep's ``parameters`` (the Sweep that W&B shows the trials in).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from trainers.config import Config

Distribution = Literal["loguniform", "uniform", "randint", "choice"]
DISTRIBUTIONS: tuple[str, ...] = Distribution.__args__


class Param(Config):
    """One searched key: a distribution with its bounds (inclusive) or its choices."""

    key: str
    kind: Distribution
    args: tuple[float | int | str, ...]

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.args
        return self.args[0] <= value <= self.args[1]


def tune_space(params: Iterable[Param]) -> dict[str, Any]:
    """Tune's param_space for ``params``."""
    from ray import tune

    space = {}
    for p in params:
        if p.kind == "loguniform":
            space[p.key] = tune.loguniform(*p.args)
        elif p.kind == "uniform":
            space[p.key] = tune.uniform(*p.args)
        elif p.kind == "randint":
            space[p.key] = tune.randint(p.args[0], p.args[1] + 1)  # YAML bounds are inclusive
        else:
            space[p.key] = tune.choice(list(p.args))
    return space


def optuna_distributions(params: Iterable[Param]) -> dict[str, Any]:
    """Optuna's distributions for ``params``."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = {}
    for p in params:
        if p.kind == "loguniform":
            out[p.key] = FloatDistribution(*p.args, log=True)
        elif p.kind == "uniform":
            out[p.key] = FloatDistribution(*p.args)
        elif p.kind == "randint":
            out[p.key] = IntDistribution(int(p.args[0]), int(p.args[1]))
        else:
            out[p.key] = CategoricalDistribution(list(p.args))
    return out


def wandb_parameters(params: Iterable[Param]) -> dict[str, dict[str, Any]]:
    """A W&B sweep config's ``parameters`` for ``params`` (W&B's documented distributions)."""
    out: dict[str, dict[str, Any]] = {}
    for p in params:
        if p.kind == "loguniform":
            out[p.key] = {"distribution": "log_uniform_values", "min": p.args[0], "max": p.args[1]}
        elif p.kind == "uniform":
            out[p.key] = {"distribution": "uniform", "min": p.args[0], "max": p.args[1]}
        elif p.kind == "randint":
            out[p.key] = {
                "distribution": "int_uniform",
                "min": int(p.args[0]),
                "max": int(p.args[1]),
            }
        else:
            out[p.key] = {"distribution": "categorical", "values": list(p.args)}
    return out
