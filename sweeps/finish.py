"""After the search: the refit, the guard set and weight mixing, and the held-out verdict.

One Ray task (on the resources of a trial: a GPU worker on a cluster, every core on one
machine) that:

1. retrains the best configuration once on a larger budget (``refit:``), for the number of
   epochs the best trial chose;
2. keeps the refit only if it beats the best trial on the **validation** split;
3. scores base model, seed recipe and the kept one of best trial and refit on the **test**
   split, which picks nothing (trials, epochs, refit, mixing factor and backends are all
   chosen on validation);
4. with a ``guard:``, scores them all on its out-of-domain sources too and mixes the kept model
   with the base in weight space (WiSE-FT), choosing the factor on validation subject to every
   *choosing* source staying within ``tolerance`` of the base at every dim; the *verifying*
   sources, like the test split, pick nothing: they say whether the guard held. The mix is
   scored on the test split;
5. saves the exported model to <storage>/<name>/best.

Everything it measures comes back as a ``Verdict`` for the report.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeps.card import write_model_files
from sweeps.config import SweepConfig
from trainers import storage
from trainers.models import matryoshka_info, write_matryoshka_info

logger = logging.getLogger(__name__)


def say(message: str) -> None:
    """A line on the sweep's console (Ray relays a task's stdout): the finish takes minutes."""
    print(f"finish: {message}", flush=True)


@dataclass
class Pick:
    """A trial's model as the sweep chose it: its sampled values, epoch and checkpoint."""

    trial: str
    sampled: dict[str, Any]
    epoch: int
    checkpoint: Any  # a tune.Checkpoint (any storage the task's node can read)


@dataclass
class Verdict:
    """What the finish task measured. ``test``: model label -> metrics; ``guard``: source ->
    model label -> metrics, each source in ``guard_roles`` ("choose" or "verify")."""

    test: dict[str, dict[str, float]] = field(default_factory=dict)
    guard: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    guard_roles: dict[str, str] = field(default_factory=dict)
    guard_tasks: dict[str, str] = field(default_factory=dict)  # source -> "N queries against M"
    guard_held: bool | None = None  # every verifying source within tolerance at every dim
    mixes: list[dict[str, Any]] = field(default_factory=list)  # one per factor tried
    mix: float = 1.0  # the chosen factor (1: the kept model unmixed)
    mix_rule: str = ""
    kept: str = ""  # "refit" or "best trial"
    exported: str = ""  # the label of the exported model's row
    refit_epochs: list[dict[str, float]] = field(default_factory=list)  # validation per epoch
    refit_config: dict[str, Any] = field(default_factory=dict)
    refit_pairs: int = 0
    negatives: dict[str, Any] | None = None  # the refit's hard-negative record
    validation: dict[str, dict[str, float]] = field(default_factory=dict)  # best trial, refit
    test_task: str = ""
    backends: dict[str, Any] = field(default_factory=dict)  # the ONNX gate's record
    precisions: dict[str, Any] = field(default_factory=dict)  # trainers/precision.py's record
    data: dict[str, Any] = field(default_factory=dict)  # the split's fingerprint (trainers.data)
    seconds: dict[str, float] = field(default_factory=dict)


def finish(
    config: SweepConfig,
    best: Pick,
    seed: Pick | None,
    baseline: dict[str, float],
    destination: str,
) -> Verdict:
    """The steps above; the exported model goes to ``destination`` (a path or a URI)."""
    from trainers.models import load_model
    from trainers.tasks import validation_task

    verdict = Verdict()
    clock = time.perf_counter()
    work = tempfile.mkdtemp(prefix="finish-")
    try:
        base_config = config.train
        split = _split(base_config)
        verdict.data = split.fingerprint
        test = _test_task(base_config, split, verdict)
        base = load_model(base_config.model, base_config.max_seq_length)
        models = {"base": base}
        if seed is not None:
            models["seed recipe"] = _load(seed, work)
        models["best trial"] = _load(best, work)
        if config.refit is not None:
            models["refit"] = _refit(config, best, baseline, os.path.join(work, "refit"), verdict)
        # Validation picks (the refit or the best trial, the mixing factor, the backends);
        # test only reports.
        validation = validation_task(base_config, split)
        kept = _keep(config, models, validation, verdict)
        # The one of best trial and refit that lost on validation is not scored further: the
        # test split and the guard cost minutes per model on a CPU (its validation figures
        # are in the report).
        models = {k: m for k, m in models.items() if k in ("base", "seed recipe", kept)}
        exported, exported_validation = models[kept], verdict.validation.get(kept)
        verdict.seconds["test evaluation"] = _score(models, test, base_config, verdict.test, "test")
        if config.guard is not None:
            exported, exported_validation = _guard_and_mix(
                config, models, kept, test, validation, exported_validation, verdict
            )
        local = os.path.join(work, "best")
        exported.save(local)
        write_matryoshka_info(local, base_config.matryoshka_dims)
        _export_and_gate(config, local, split, validation, exported_validation, verdict)
        verdict.seconds["in all"] = time.perf_counter() - clock  # up to the upload
        write_model_files(Path(local), config, verdict, best)
        storage.replace_folder(local, destination)
        return verdict
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _test_task(base_config, split, verdict: Verdict):
    """The held-out test task, or validation's where the split has no test part."""
    from trainers.tasks import test_task, validation_task

    if split.test:
        test = test_task(base_config, split)
        verdict.test_task = test.describe()
    else:
        test = validation_task(base_config, split)
        verdict.test_task = (
            f"{test.describe()} of the validation split (no test split: set test_size for "
            "a held-out verdict)"
        )
    return test


def _refit(config: SweepConfig, best: Pick, baseline: dict, output_dir: str, verdict: Verdict):
    """The best trial's recipe trained again on the refit's pairs; the model it saved."""
    from trainers.models import load_model
    from trainers.train import train

    refit_config = config.trial_config(
        best.sampled,
        epochs=best.epoch,
        max_pairs=config.refit.max_pairs,
        output_dir=output_dir,
        load_best_model_at_end=False,
    )
    verdict.refit_config = refit_config.to_dict()
    say(
        f"refit: {refit_config.max_pairs or 'all'} pairs, {refit_config.epochs} epochs, "
        + ", ".join(
            f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in best.sampled.items()
        )
    )
    started = time.perf_counter()
    result = train(refit_config, lambda epoch, metrics, _: None, baseline=baseline, progress=False)
    verdict.seconds["refit"] = time.perf_counter() - started
    verdict.refit_epochs = result.epochs
    verdict.refit_pairs = result.train_pairs
    verdict.negatives = result.negatives
    return load_model(refit_config.output_dir)


def _keep(config: SweepConfig, models: dict, validation, verdict: Verdict) -> str:
    """The refit if it beats the best trial on validation, else the best trial."""
    kept = "best trial"
    if "refit" in models:
        candidates = {label: models[label] for label in ("best trial", "refit")}
        _score(candidates, validation, config.train, verdict.validation, "validation")
        objective = config.objective
        if verdict.validation["refit"][objective] > verdict.validation[kept][objective]:
            kept = "refit"
    verdict.kept = verdict.exported = kept
    return kept


def _score(models: dict, task, base_config, into: dict, split: str) -> float:
    """Every model's metrics on ``task`` (of ``split``), into ``into``; the seconds it took."""
    started = time.perf_counter()
    for label, model in models.items():
        say(f"scoring {label} on the {split} split ({task.describe()})")
        into[label] = _evaluate(model, task, base_config, base=label == "base")
    return time.perf_counter() - started


def _guard_and_mix(
    config: SweepConfig,
    models: dict,
    kept: str,
    test,
    validation,
    kept_validation: dict | None,
    verdict: Verdict,
):
    """Every model on every guard source, then the kept model mixed with the base (``_mix``,
    on the choosing sources); the exported model on the verifying sources; the exported model
    and its validation metrics."""
    from trainers.tasks import pairs_task

    started = time.perf_counter()
    guard, base_config = config.guard, config.train
    tasks = {}
    for role, sources in (("choose", guard.choose), ("verify", guard.verify)):
        for source in sources:
            task = pairs_task(source, source.max_pairs, source.max_queries, base_config.seed)
            tasks[source.data] = task
            verdict.guard_roles[source.data] = role
            verdict.guard_tasks[source.data] = task.describe()
    say(
        "scoring every model on the guard's sources ("
        + "; ".join(f"{n} ({verdict.guard_roles[n]}): {d}" for n, d in verdict.guard_tasks.items())
        + ") and mixing"
    )
    for name, task in tasks.items():
        verdict.guard[name] = {
            label: _evaluate(model, task, base_config, base=label == "base")
            for label, model in models.items()
        }
    choosing = {n: t for n, t in tasks.items() if verdict.guard_roles[n] == "choose"}
    exported, exported_validation = _mix(
        verdict, config, models["base"], models[kept], kept, choosing, validation, kept_validation
    )
    if verdict.mix < 1:
        verdict.exported = f"{kept}, mixed {verdict.mix:g}"
        verdict.test[verdict.exported] = _evaluate(exported, test, base_config)
        chosen = next(m for m in verdict.mixes if m["factor"] == verdict.mix)
        for name, task in tasks.items():
            # The choosing sources were scored while choosing; the verifying ones only now,
            # once the choice is made.
            verdict.guard[name][verdict.exported] = chosen["guard"].get(name) or _evaluate(
                exported, task, base_config
            )
    verifying = [name for name, role in verdict.guard_roles.items() if role == "verify"]
    verdict.guard_held = (
        all(
            drop <= guard.tolerance
            for name in verifying
            for drop in drops(verdict.guard[name]["base"], verdict.guard[name][verdict.exported])
        )
        if verifying
        else None  # nothing verified: the report says so
    )
    verdict.seconds["guard and mixing"] = time.perf_counter() - started
    return exported, exported_validation


def drops(base: dict[str, float], model: dict[str, float]) -> list[float]:
    """MAP@100 lost against the base at each dim (positive: worse than the base)."""
    return [
        base[key] - model[key] for key in base if key.startswith("dim_") and key.endswith("map@100")
    ]


def _evaluate(model, task, base_config, base: bool = False) -> dict[str, float]:
    """``model``'s metrics on ``task``; the base model's come from the score cache when it
    scored this very task before (trainers.tasks.evaluate_cached)."""
    from trainers.tasks import evaluate, evaluate_cached

    return evaluate_cached(model, task, base_config) if base else evaluate(model, task, base_config)


def _export_and_gate(
    config: SweepConfig, local: str, split, validation, exported_validation, verdict: Verdict
) -> None:
    """The ONNX exports of the folder (with ``onnx:``), the int8 output's calibration on the
    train split's passages, then every backend and output precision gated against torch
    float32 at every dim, and the recommended dim."""
    from trainers import export, gate, precision
    from trainers.data import sample
    from trainers.models import load_model

    started = time.perf_counter()
    if config.onnx:
        say("exporting to ONNX (fp32, int8) and gating each backend and output precision")
        export.export(local)
    else:
        say("gating the output precisions (int8, binary) at every dim")
    quantization = config.quantization
    # From the whole train split (the trials' sample may hold fewer passages than wanted),
    # a seeded sample: never a validation or test passage.
    pool = split.train_pool or split.train
    passages = [p.passage for p in sample(pool, 2 * quantization.calibration_passages, 0)]
    precision.calibrate(
        local, load_model(local, device="cpu"), passages, quantization.calibration_passages
    )
    # On validation, not test: which backend and precisions are served is a choice, and test
    # picks nothing (it also costs 1,300 encodes per backend instead of 11,000 on CPU).
    verdict.backends = gate.gate(
        local,
        validation,
        config.train,
        config.onnx_tolerance,
        exported_validation,
        precision_tolerance=quantization.tolerance,
        recommend_within=quantization.recommend_within,
    )
    verdict.precisions = matryoshka_info(local).get("precisions", {})
    verdict.seconds["export and gates"] = time.perf_counter() - started


def _split(config):
    from trainers.data import load_split

    return load_split(config)


def _load(pick: Pick, work: str):
    """The model of a picked checkpoint (a training checkpoint: its model files load as is)."""
    from trainers.models import load_model

    folder = pick.checkpoint.to_directory(os.path.join(work, f"trial-{pick.trial}"))
    return load_model(folder)


def _mix(
    verdict: Verdict,
    config: SweepConfig,
    base,
    tuned,
    label: str,
    choosing: dict,
    validation,
    tuned_validation: dict[str, float] | None,
) -> tuple[Any, dict[str, float]]:
    """WiSE-FT: the factor with the best validation objective among those that keep every
    choosing source within the guard's tolerance of the base at every dim; the mixed model and
    its validation metrics. ``tuned_validation``: the tuned model's validation metrics if
    already measured. Validation is scored only for factors within the guard: the others
    cannot be chosen."""
    from trainers.interpolate import interpolate
    from trainers.tasks import evaluate

    guard, train = config.guard, config.train
    tried, models, validations = [], {}, {}
    for factor in sorted(set(guard.mix), reverse=True):
        mixed = tuned if factor == 1 else interpolate(base, tuned, factor)
        scores = {}
        for name, task in choosing.items():
            # Factor 1 is the tuned model itself: its guard metrics are already measured.
            scores[name] = (
                verdict.guard[name][label] if factor == 1 else evaluate(mixed, task, train)
            )
        largest = max(
            d for name in choosing for d in drops(verdict.guard[name]["base"], scores[name])
        )
        within = largest <= guard.tolerance
        if within:
            if factor == 1 and tuned_validation is not None:
                validations[factor] = tuned_validation
            else:
                validations[factor] = evaluate(mixed, validation, train)
            models[factor] = mixed
        tried.append(
            {
                "factor": factor,
                "validation": validations[factor][config.objective] if within else None,
                "guard": scores,
                "largest_drop": largest,
                "within": within,
            }
        )
    if not validations:  # none within: the smallest factor is exported; its validation too
        smallest = min(guard.mix)
        models[smallest] = tuned if smallest == 1 else interpolate(base, tuned, smallest)
        validations[smallest] = evaluate(models[smallest], validation, train)
    verdict.mixes += tried
    verdict.mix, verdict.mix_rule = choose_mix(tried, guard.tolerance, config.objective)
    return models[verdict.mix], validations[verdict.mix]


def choose_mix(tried: list[dict[str, Any]], tolerance: float, objective: str) -> tuple[float, str]:
    """The mixing rule, and how to say it: among the factors that kept every choosing source
    within ``tolerance`` of the base at every dim, the one with the best validation score (the
    larger factor on a tie, as ``tried`` runs from large to small); if none did, the smallest
    factor tried, the one nearest the base."""
    within = [m for m in tried if m["within"]]
    if not within:
        chosen = min(m["factor"] for m in tried)
        return chosen, (
            f"no factor kept the choosing sources within {tolerance} MAP@100 of the base at "
            f"every dim: the smallest tried, {chosen:g}, is exported"
        )
    chosen = max(within, key=lambda m: m["validation"])["factor"]
    return chosen, (
        f"the best validation {objective} among the factors that keep every choosing source "
        f"within {tolerance} MAP@100 of the base at every dim"
    )
