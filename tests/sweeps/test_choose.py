"""Choosing without Ray: trial rows from made-up reports, the best trial, the mixing rule, the
sampler choice and the ASHA that keeps the seed recipe's trial (each ran only inside the smoke
sweep before)."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

import sweeps
from sweeps import choose
from sweeps.finish import choose_mix
from sweeps.sampler import choose_sampler
from sweeps.search import ReferenceKeepingASHA
from sweeps.trainable import OBJECTIVE, SELECTION


@pytest.fixture(scope="module")
def config():
    # The default sweep: dims 384/256/128/64, epochs 1-4 for sampled trials, a seed recipe.
    return sweeps.default_config()


def reports(config, rows: list[tuple[int, float, float]]) -> pd.DataFrame:
    """A trial's reports: (epoch, selection, objective) per epoch, MAP@100 = objective - dim/1e4."""
    return pd.DataFrame(
        [
            {
                "epoch": epoch,
                SELECTION: selection,
                OBJECTIVE: objective,
                **{f"dim_{d}_cosine_map@100": objective - d / 1e4 for d in config.dims},
                **{f"dim_{d}_cosine_ndcg@10": 0.0 for d in config.dims},
            }
            for epoch, selection, objective in rows
        ]
    )


def sampled_point(config, **values):
    point = {p.key: None for p in config.search}
    point.update(values)
    return point


def test_a_trial_row_keeps_its_best_choosable_epoch(config):
    # Epoch 3 scores best, but SELECTION -1 marks it not choosable (outside the epoch range).
    frame = reports(config, [(1, 0.30, 0.30), (2, 0.42, 0.42), (3, -1.0, 0.50), (4, 0.41, 0.41)])
    point = sampled_point(config, learning_rate=1e-4)
    row = choose.trial_row(config, "t1", point, frame, seconds=12.34)
    assert row.chosen_epochs == 2 and row.objective == pytest.approx(0.42)
    assert row.map_at == {d: pytest.approx(0.42 - d / 1e4) for d in config.dims}
    assert row.status == f"completed 4/{config.max_epochs} epochs" and row.error == ""
    assert row.seconds == 12.3 and not row.seed_recipe and row.scored
    columns = row.columns()
    assert list(columns)[:2] == ["trial", config.search[0].key] and columns["seconds"] == 12.3


def test_stopped_failed_and_silent_trials_say_so(config):
    point = sampled_point(config, learning_rate=1e-3)
    stopped = choose.trial_row(config, "t2", point, reports(config, [(1, 0.2, 0.2)]))
    assert stopped.status == f"stopped by ASHA after 1/{config.max_epochs} epochs"
    failed = choose.trial_row(config, "t3", point, None, RuntimeError("line 1\nCUDA OOM"))
    assert failed.status == "failed" and failed.error == "CUDA OOM" and not failed.scored
    assert failed.chosen_epochs is None and failed.map_at == dict.fromkeys(config.dims)


def test_the_best_row_is_the_best_scored_one_and_the_seed_recipe_is_found(config):
    seed_point = dict(config.first_points[0])
    seed = choose.trial_row(config, "s", seed_point, reports(config, [(1, 0.5, 0.5)]))
    assert seed.seed_recipe
    good = choose.trial_row(config, "g", sampled_point(config), reports(config, [(1, 0.6, 0.6)]))
    silent = choose.trial_row(config, "n", sampled_point(config), None)
    assert choose.best([seed, silent, good]) is good
    assert choose.seed_recipe([good, seed]) is seed
    assert choose.best([silent]) is None and choose.seed_recipe([good]) is None


def mix(factor: float, validation: float, within: bool) -> dict:
    return {"factor": factor, "validation": validation, "within": within}


def test_the_mixing_rule_takes_the_best_validation_within_the_guard_else_the_smallest():
    tried = [mix(1.0, 0.50, False), mix(0.8, 0.48, True), mix(0.6, 0.48, True), mix(0.4, 0.4, True)]
    factor, rule = choose_mix(tried, 0.01, "objective")
    assert factor == 0.8 and "best validation objective" in rule  # a tie goes to the larger
    factor, rule = choose_mix([mix(1.0, None, False), mix(0.5, None, False)], 0.01, "objective")
    assert factor == 0.5 and "no factor kept the choosing sources" in rule


def test_the_sampler_is_qmc_below_two_trials_per_key_then_gp_unless_set(config):
    keys = len(config.search)
    few = config.model_copy(update={"num_samples": len(config.first_points) + 2 * keys - 1})
    assert choose_sampler(few)[0] == "qmc"
    many = config.model_copy(update={"num_samples": len(config.first_points) + 2 * keys})
    assert choose_sampler(many)[0] == ("gp" if keys <= 8 else "tpe")
    assert choose_sampler(many.model_copy(update={"sampler": "tpe"})) == (
        "tpe",
        "set in the sweep config",
    )


def test_asha_never_stops_the_reference_trial_and_keeps_it_out_of_its_rungs():
    from ray.tune.schedulers import TrialScheduler

    reference = {"learning_rate": 2e-5}
    asha = ReferenceKeepingASHA(
        reference, time_attr="training_iteration", max_t=4, grace_period=1, reduction_factor=2
    )
    asha.set_search_properties("objective", "max")
    trials = {
        name: SimpleNamespace(trial_id=name, config=config)
        for name, config in [
            ("a", {"learning_rate": 1e-4}),
            ("b", {"learning_rate": 1e-3}),
            ("ref", reference),
            ("c", {"learning_rate": 1e-2}),
        ]
    }
    for trial in trials.values():
        asha.on_trial_add(None, trial)

    def result(name: str, score: float) -> str:
        return asha.on_trial_result(
            None, trials[name], {"training_iteration": 1, "objective": score}
        )

    assert result("b", 0.8) == TrialScheduler.CONTINUE  # the first at the rung
    assert result("a", 0.9) == TrialScheduler.CONTINUE  # above the rung's median
    assert result("ref", 0.0) == TrialScheduler.CONTINUE  # the worst, and never stopped
    assert result("c", 0.1) == TrialScheduler.STOP  # a sampled trial that bad is
    recorded = {t for rung in asha._brackets[0]._rungs for t in rung[1]}
    assert "ref" not in recorded and {"a", "b"} <= recorded
    asha.on_trial_complete(None, trials["ref"], {"training_iteration": 4, "objective": 0.0})
    assert "ref" not in asha._trial_info
