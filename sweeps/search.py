"""How a sweep searches: which Optuna sampler, what Optuna is told, and fair early stopping.

Fair early stopping. ASHA compares trials at rungs (after epoch 1, 2, 4...). When `epochs`
itself is searched and each trial's learning-rate schedule spans its own epochs, a 4-epoch
trial at epoch 1 is still near its peak rate while a 1-epoch trial has decayed to zero:
the rung compares different phases of different schedules, and stops long trials for it.
So epochs are the budget here (as Ludwig does under a Ray scheduler): every sampled trial's
schedule spans the most epochs of the range, a rung compares like with like, and each trial
keeps its best epoch within the range (`SweepConfig.epochs`; the report states the chosen
number). The seed recipe's trial is the reference: it runs its own recipe to the end, and is
kept out of ASHA's rungs so that its different schedule judges no one.

What Optuna learns. Ray tells Optuna that a trial ASHA stopped COMPLETED, with its rung value
as if it were a full run (ray/tune/search/optuna/optuna_search.py ``on_trial_complete``).
``PruneAwareOptunaSearch`` tells it PRUNED instead, so the samplers weigh it as a partial run
(TPE ranks pruned trials below completed ones; GP ignores them).

The sampler Optuna runs is chosen in sweeps/sampler.py.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from sweeps.config import SweepConfig
from sweeps.sampler import choose_sampler, make_sampler
from sweeps.trainable import FINAL

logger = logging.getLogger(__name__)


class PruneAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna PRUNED for a trial a scheduler stopped early (a trial
    that ran to its end says so on its last report: ``FINAL``)."""

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ):
        if error or not result or trial_id not in self._ot_trials or result.get(FINAL):
            return super().on_trial_complete(trial_id, result=result, error=error)
        from optuna.trial import TrialState

        value = result.get(self.metric)
        trial = self._ot_trials[trial_id]
        if value is not None and not math.isnan(value):
            # Tune did not pass the stopping report on: it is the last intermediate value.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trial.report(float(value), int(result.get("training_iteration", 0)))
        self._ot_study.tell(trial, state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)


class ReferenceKeepingASHA(ASHAScheduler):
    """ASHA that never stops the reference trial (the seed recipe's) and keeps it out of its
    rungs: its own schedule must not judge the sampled trials."""

    def __init__(self, reference: dict[str, Any] | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reference = reference

    def _is_reference(self, trial) -> bool:
        return self.reference is not None and dict(trial.config) == self.reference

    def on_trial_result(self, tune_controller, trial, result):
        if self._is_reference(trial):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        if self._is_reference(trial):
            self._trial_info.pop(trial.trial_id, None)
            return
        super().on_trial_complete(tune_controller, trial, result)


def make_searcher(config: SweepConfig, metric: str) -> PruneAwareOptunaSearch:
    name, _ = choose_sampler(config)
    return PruneAwareOptunaSearch(
        metric=metric,
        mode="max",
        sampler=make_sampler(name, config),
        points_to_evaluate=[dict(p) for p in config.first_points] or None,
    )


def make_scheduler(config: SweepConfig) -> ReferenceKeepingASHA:
    """ASHA over epochs, with the seed recipe's trial out of its rungs and never stopped."""
    return ReferenceKeepingASHA(
        reference=dict(config.first_points[0]) if config.seed_epochs is not None else None,
        time_attr="training_iteration",
        max_t=config.max_epochs,
        grace_period=min(config.grace_period, config.max_epochs),
        reduction_factor=config.reduction_factor,
    )
