"""What a finished sweep leaves behind in runs/<name>/:

- best/         the exported model: a plain sentence-transformers folder + metrics.json
- results.csv   one row per trial (sampled values, chosen epochs, per-dim validation MAP@100,
                status, seconds) and one for the refit
- report.md     the search (sampler, epochs), the held-out test table (base / seed recipe /
                best trial / refit / exported), the guard set and weight mixing, every trial
- map_vs_dim.png, importance.png, quality_vs_bytes.png   plots the report shows
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeps.card import dim_table, fmt, precision_lines
from sweeps.choose import TrialRow
from sweeps.config import SweepConfig
from sweeps.finish import Verdict, drops
from sweeps.sampler import choose_sampler
from sweeps.space import optuna_distributions
from sweeps.trainable import OBJECTIVE
from trainers.data import describe_fingerprint, describe_source
from trainers.gate import gate_table

logger = logging.getLogger(__name__)

TABLE_METRICS = ("map@100", "ndcg@10", "mrr@10", "accuracy@1", "recall@10")


@dataclass
class Summary:
    """What run_sweep returns: the console text, the exported model (None if no trial
    reported) and the sweep's folder (runs/<name>/)."""

    text: str
    best_dir: Path | None
    out: Path
    stopped_by: int | None = None  # the signal that stopped the sweep (it can be resumed)


@dataclass
class TrialReports:
    """One trial of a sweep as it stands on disk: its id, its sampled config, every report
    (one per epoch, in order), whether Tune marked it done, its checkpoints and whether a
    worker failure hit it (it may have been retried since). ``epochs_logged``: every epoch as
    Tune logged it; one that a resume ran again (last_report_per_epoch) is in it twice."""

    trial_id: str
    config: dict[str, Any]
    reports: list[dict[str, Any]]
    done: bool
    checkpoints: int
    failed_once: bool
    epochs_logged: list[int]


def read_trials(out: Path) -> list[TrialReports]:
    """Every trial in the sweep folder ``out``, finished or still running.

    The one place that knows Tune's trial-folder layout (trial_<id>/ as trial_dirname names
    it, with params.json, result.json, checkpoint_*/ and error.txt).
    """
    trials = []
    for folder in sorted(Path(out).glob("trial_*")):
        if not folder.is_dir():
            continue
        result = folder / "result.json"
        lines = result.read_text().splitlines() if result.is_file() else []
        logged = [json.loads(line) for line in lines if line.strip()]
        params = folder / "params.json"
        trials.append(
            TrialReports(
                trial_id=folder.name.removeprefix("trial_"),
                config=json.loads(params.read_text()) if params.is_file() else {},
                reports=last_report_per_epoch(logged),
                done=bool(logged and logged[-1].get("done")),
                checkpoints=sum(1 for _ in folder.glob("checkpoint_*")),
                failed_once=(folder / "error.txt").is_file(),
                epochs_logged=[r["epoch"] for r in logged if "epoch" in r],
            )
        )
    return trials


def last_report_per_epoch(logged: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One report per epoch, the last one logged.

    A stop can land after Tune logged an epoch's result but before it recorded that epoch's
    checkpoint; the resumed trial then runs that one epoch again from the checkpoint before and
    reports it a second time. The later report describes the model the trial went on with.
    """
    by_epoch: dict[Any, dict[str, Any]] = {}
    for index, report in enumerate(logged):
        by_epoch[report.get("epoch", ("no epoch", index))] = report
    return list(by_epoch.values())


@dataclass
class SearchHistory:
    """What the sampler saw: its class, and Optuna's record of every trial told to it."""

    sampler: str
    trials: list[dict[str, Any]]  # {"state": "COMPLETE" | "PRUNED" | ..., "value", "params"}


def read_search(out: Path) -> SearchHistory:
    """The searcher's saved state in the sweep folder ``out`` (Tune saves it as it goes)."""
    import pickle

    states = sorted(Path(out).glob("searcher-state-*.pkl"), key=lambda p: p.stat().st_mtime)
    if not states:
        raise FileNotFoundError(f"no searcher state in {out}")
    with states[-1].open("rb") as f:
        state = pickle.load(f)
    study = state["_ot_study"]
    trials = [
        {
            "state": t.state.name,
            "value": t.value,
            "params": t.params,
            "steps": t.intermediate_values,
        }
        for t in study.trials
    ]
    return SearchHistory(type(study.sampler).__name__, trials)


def write_csv(rows: list[TrialRow], verdict: Verdict | None, path: Path) -> None:
    dims = list(rows[0].map_at) if rows else []
    table = [r.columns() for r in rows]
    if verdict is not None and verdict.refit_epochs:
        last = verdict.refit_epochs[-1]
        refit = {"trial": "refit", "status": f"refit on {verdict.refit_pairs} pairs", "error": ""}
        refit["chosen_epochs"] = len(verdict.refit_epochs)
        refit.update({f"dim_{d}_map@100": last.get(f"dim_{d}_cosine_map@100") for d in dims})
        refit[OBJECTIVE] = last.get(verdict.refit_config.get("objective", ""))
        refit["seconds"] = round(verdict.seconds.get("refit", 0.0), 1)
        table.append(refit)
    columns = list(table[0]) if table else []
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table)


def plot_map_vs_dim(config: SweepConfig, verdict: Verdict, path: Path) -> None:
    """Test-split MAP@100 against the truncation dim, one line per model of the verdict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = list(config.dims)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    styles = iter(["o--", "s-", "^-", "D-", "v-", "x-"])
    for label, metrics in verdict.test.items():
        values = [metrics[f"dim_{d}_cosine_map@100"] for d in dims]
        ax.plot(dims, values, next(styles, "-"), label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(dims, [str(d) for d in dims])
    ax.set_xlabel("Matryoshka dim (embedding truncated to)")
    ax.set_ylabel("MAP@100 on the test split (cosine)")
    ax.set_title(f"sweep {config.name}: MAP@100 vs dim")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_quality_vs_bytes(record: dict[str, Any], path: Path) -> None:
    """Validation MAP@100 against bytes per vector, one line per output precision through the
    backend served on a CPU, each point a dim; the recommended one circled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trainers import precision

    backend = precision.cpu_backend(record)
    entry = record["backends"][backend]
    dims = sorted(int(d) for d in entry["dims"])
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    styles = {
        "float32": "o-",
        "int8": "s-",  # uint8: the same codes (trainers/precision.py), the same points
        "binary": "D-",
        "binary-rescored": "^--",
    }
    for name, style in styles.items():
        points = [entry["dims"][str(d)].get(name) for d in dims]
        if any(p is None for p in points):
            continue
        xs, ys = [p["bytes"] for p in points], [p["map@100"] for p in points]
        ax.plot(
            xs,
            ys,
            style,
            label={"int8": "int8, uint8", "binary": "binary, ubinary"}.get(name, name),
        )
        for d, x, y, p in zip(dims, xs, ys, points, strict=True):
            ax.annotate(str(d), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
            if not p["allowed"] and name != "binary-rescored":
                ax.plot([x], [y], "x", color="red", markersize=9)
    best = entry["recommended"]
    if best.get("dim") is not None:
        ax.plot([best["bytes"]], [best["map@100"]], "o", mfc="none", mec="black", markersize=16)
    full = entry["dims"][str(max(dims))]["float32"]["map@100"]
    ax.axhline(full - record["recommend_within"], color="grey", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bytes per vector (log scale)")
    ax.set_ylabel("MAP@100 on the validation split")
    ax.set_title(f"{backend}: quality vs size (x: refused; circle: recommended)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def importances(config: SweepConfig, rows: list[TrialRow]) -> dict[str, float]:
    """Optuna's hyper-parameter importance (fANOVA) over the trials that reported."""
    import optuna

    done = [r for r in rows if r.objective is not None]
    params = config.search
    if len(done) < 2 or not params:
        return {}
    distributions = optuna_distributions(params)
    study = optuna.create_study(direction="maximize")
    for r in done:
        study.add_trial(
            optuna.trial.create_trial(
                params={p.key: r.params[p.key] for p in params},
                distributions=distributions,
                value=float(r.objective),
            )
        )
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=config.seed)
        return optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (RuntimeError, ValueError) as err:  # e.g. every trial scored the same
        logger.warning("parameter importance not computed: %s", err)
        return {}


def plot_importance(values: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(values)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(names) + 1.2))
    ax.barh(names, [values[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance for the objective (Optuna fANOVA)")
    ax.set_title("hyper-parameter importance")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(
    config: SweepConfig,
    rows: list[TrialRow],
    best_row: TrialRow | None,
    verdict: Verdict | None,
    imp: dict[str, float],
    out: Path,
) -> Path:
    params = [p.key for p in config.search]
    lines = [f"# Sweep `{config.name}`", ""]
    n_failed = sum(r.status == "failed" for r in rows)
    n_stopped = sum(r.status.startswith("stopped") for r in rows)
    sampler, why = choose_sampler(config)
    lo, hi = config.epochs
    lines += [
        f"{len(rows)} trials: {len(rows) - n_failed - n_stopped} completed, {n_stopped} stopped "
        f"early by ASHA, {n_failed} failed. Objective: `{config.objective}` (maximised, on the "
        "validation split).",
        "",
        f"- **Sampler: {sampler}** ({why}).",
        f"- **Epochs are the budget:** every sampled trial trained {hi} epochs (its learning-rate "
        "schedule spans them, so ASHA compared trials at the same phase of the same schedule) "
        f"and kept its best epoch from {lo} to {hi}; the seed recipe's trial ran its own "
        f"{config.seed_epochs} epochs to the end, outside ASHA's rungs."
        if config.seed_epochs
        else f"- **Epochs are the budget:** every trial trained {hi} epochs and kept its best "
        f"epoch from {lo} to {hi}.",
    ]
    if best_row is not None:
        lines += [
            f"- **Chosen:** trial `{best_row.trial}`, **{best_row.chosen_epochs} epochs**: "
            + ", ".join(f"{k} {fmt(best_row.params[k])}" for k in params),
        ]
    if verdict is not None:
        lines += _verdict_lines(config, verdict, out)
    if best_row is not None:
        lines += ["", "![MAP@100 vs dim](map_vs_dim.png)", ""]
    columns = ["trial", *params, "chosen_epochs"]
    columns += [f"dim_{d}_map@100" for d in config.dims] + ["status", "seconds"]
    lines += [
        "## Trials (validation split)",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for r in rows:
        marks = " (seed recipe)" if r.seed_recipe else " (first point)" if r.first_point else ""
        values = r.columns()
        cells = [
            f"{values[c]:.0f}"
            if c == "seconds"
            else fmt(values[c]) + (marks if c == "trial" else "")
            for c in columns
        ]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in rows if r.status == "failed"]
    if failed:
        lines += ["", "## Failed trials", ""] + [f"- `{r.trial}`: {r.error}" for r in failed]
    lines += ["", "## Hyper-parameter importance", ""]
    if imp:
        lines += ["| key | importance |", "|---|---:|"] + [
            f"| {k} | {v:.3f} |" for k, v in imp.items()
        ]
        lines += ["", "![importance](importance.png)"]
    else:
        lines.append("Not enough finished trials with different scores to compute it.")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _verdict_lines(config: SweepConfig, verdict: Verdict, out: Path) -> list[str]:
    lines = []
    if verdict.refit_config:
        rc = verdict.refit_config
        lines.append(
            f"- **Refit:** the chosen configuration retrained on {verdict.refit_pairs} pairs for "
            f"{rc['epochs']} epochs ({verdict.seconds.get('refit', 0) / 60:.1f} min); "
            f"**exported: {verdict.exported}** (the refit is kept only if it beats the best "
            "trial on the validation split"
            + (
                ": validation "
                + ", ".join(
                    f"{label} {metrics[config.objective]:.4f}"
                    for label, metrics in verdict.validation.items()
                )
                if verdict.validation
                else ""
            )
            + ")."
        )
    if verdict.seconds:
        steps = ", ".join(
            f"{step} {seconds / 60:.1f} min" for step, seconds in verdict.seconds.items()
        )
        lines.append(f"- **After the trials:** {steps}.")
    if verdict.data:
        lines += ["", "## Data", "", *data_lines(config, verdict.data)]
    if config.train.hard_negatives is not None:
        lines += ["", "## Hard negatives", "", *negatives_lines(config, verdict, out)]
    lines += [
        "",
        "## Held-out test split",
        "",
        f"{verdict.test_task}, from packages that neither training nor validation saw. It is "
        "scored once, at the end, and picks nothing: the trials, their epochs, refit or not, "
        "the mixing factor and the served backends were chosen on the validation split, whose "
        "figures (below) are therefore optimistic.",
        "",
        "MAP@100:",
        "",
        *dim_table(config, verdict.test, "map@100"),
        "",
        "NDCG@10:",
        "",
        *dim_table(config, verdict.test, "ndcg@10"),
    ]
    for metric in TABLE_METRICS[2:]:
        lines += ["", f"{metric.upper()}:", "", *dim_table(config, verdict.test, metric)]
    if verdict.backends:
        lines += [
            "",
            "## Serving backends (quality gate)",
            "",
            f"The exported model through each backend on the validation split "
            f"({verdict.backends['task']}): choosing a backend is a choice, so test has no say. "
            f"A backend is servable by default only within {verdict.backends['tolerance']} "
            "MAP@100 of torch fp32 at every dim (serve/app.py --backend):",
            "",
            *gate_table(verdict.backends, list(config.dims)),
        ]
    if verdict.precisions:
        lines += ["", *precision_lines(verdict.precisions, "quality_vs_bytes.png")]
    if verdict.guard:
        lines += guard_lines(config, verdict)
    return lines


def negatives_lines(config: SweepConfig, verdict: Verdict, out: Path | None) -> list[str]:
    """What was mined before the trials (negatives.json) and what the refit read."""
    from trainers.negatives import describe

    settings = config.train.hard_negatives
    lines = [
        f"Mined with the base model (`{config.train.model}`) among the train split's passages: "
        + ", ".join(f"{k} {v}" for k, v in settings.to_dict().items())
        + ". Every trial and the refit read them from the cache.",
        "",
    ]
    path = out / "negatives.json" if out is not None else None
    if path is not None and path.is_file():
        names = ["the trials' pairs", "the refit's pairs"]
        for name, record in zip(names, json.loads(path.read_text()), strict=False):
            lines.append(f"- {name}: {describe(record)}")
    if verdict.negatives:
        lines.append(f"- the refit read: {describe(verdict.negatives)}")
    return lines


def guard_lines(config: SweepConfig, verdict: Verdict) -> list[str]:
    """The guard's sources at every dim, in their roles, and the mixing factors tried."""
    tolerance = config.guard.tolerance
    verifying = [n for n, role in verdict.guard_roles.items() if role == "verify"]
    if not verifying:
        held = "No source verifies (guard: verify is empty): nothing says whether the guard held."
    elif verdict.guard_held:
        held = f"**The guard held**: every verifying source is within {tolerance} at every dim."
    else:
        held = (
            f"**The guard did not hold**: a verifying source lost more than {tolerance} MAP@100 "
            "at some dim (below)."
        )
    lines = [
        "",
        "## Guard (out of domain)",
        "",
        "Out-of-domain sources, MAP@100 at every dim. The *choosing* sources choose the mixing "
        f"factor (each must stay within {tolerance} of the base at every dim); the *verifying* "
        "sources, like the test split, choose nothing: they are scored after the choice and "
        f"say whether the guard held. {held}",
    ]
    for name, role in verdict.guard_roles.items():
        scores = verdict.guard[name]
        lines += [
            "",
            f"**{name}** ({'chooses' if role == 'choose' else 'verifies'}; "
            f"{verdict.guard_tasks[name]}):",
            "",
            *dim_table(config, scores, "map@100"),
        ]
    choosing = [n for n, role in verdict.guard_roles.items() if role == "choose"]
    lines += [
        "",
        "Weight-space mixing with the base model (WiSE-FT; factor = share of the fine-tuned "
        f"weights), chosen by: {verdict.mix_rule}. **Chosen factor: {verdict.mix:g}.** "
        "Validation is scored only where the choosing sources held.",
        "",
        f"| factor | validation {config.objective} | "
        + " | ".join(f"{n}: largest drop" for n in choosing)
        + " | within |",
        "|---:|---:|" + "---:|" * len(choosing) + "---|",
    ]
    for m in verdict.mixes:
        largest = [max(drops(verdict.guard[n]["base"], m["guard"][n])) for n in choosing]
        validation = "-" if m["validation"] is None else f"{m['validation']:.4f}"
        lines.append(
            f"| {m['factor']:g} | {validation} | "
            + " | ".join(f"{d:+.4f}" for d in largest)
            + f" | {'yes' if m['within'] else 'no'} |"
        )
    return lines


def data_lines(config: SweepConfig, seen: dict[str, Any]) -> list[str]:
    """The data fingerprint: what was read, and each split's pairs and hash. Two reports were
    scored on the same splits only if these hashes match (trainers.data.compare)."""
    lines = [f"Source: {describe_source(seen)}; {seen['pairs']} pairs, seed {seen['seed']}.", ""]
    lines += ["| split | pairs | sha256 of its pairs |", "|---|---:|---|"]
    lines += [f"| {n} | {p['pairs']} | `{p['sha256']}` |" for n, p in seen["splits"].items()]
    if "file" not in seen["origin"]:
        lines += [
            "",
            f"The source changes over time; this run's pairs are in `runs/{config.name}/data/"
            f"pairs.jsonl`. `--data runs/{config.name}/data/pairs.jsonl --group_column group` "
            "reproduces these splits on any machine.",
        ]
    return lines


def wandb_online() -> bool:
    """Stream to W&B: an API key is set and W&B was not told to stay offline."""
    return bool(os.environ.get("WANDB_API_KEY")) and os.environ.get("WANDB_MODE") != "offline"


def export(
    config: SweepConfig,
    rows: list[TrialRow],
    best_row: TrialRow | None,
    verdict: Verdict | None,
    out: Path,
    wandb_line: str | None = None,
) -> Summary:
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, verdict, out / "results.csv")
    best_dir = out / "best" if verdict is not None and (out / "best").is_dir() else None
    if verdict is not None:
        plot_map_vs_dim(config, verdict, out / "map_vs_dim.png")
        if verdict.precisions:
            plot_quality_vs_bytes(verdict.precisions, out / "quality_vs_bytes.png")
    imp = importances(config, rows)
    if imp:
        plot_importance(imp, out / "importance.png")
    report = write_report(config, rows, best_row, verdict, imp, out)
    text = [f"report:     {report}", f"results:    {out / 'results.csv'}"]
    if verdict is not None and verdict.data:
        text.append(f"data:       {describe_fingerprint(verdict.data)}")
    if best_dir is not None:
        text.append(f"best model: {best_dir}  ({verdict.exported})")
        if (Path(__file__).resolve().parents[1] / "serve" / "app.py").is_file():
            text.append(f"serve it:   python serve/app.py --model {best_dir}")
    else:
        text.append(
            "no trial reported a result: no model exported (see the report's failed trials)"
        )
    if wandb_line:
        text.append(wandb_line)
    return Summary(text="\n".join(text), best_dir=best_dir, out=out)
