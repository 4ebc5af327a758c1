"""What a finished sweep leaves behind in runs/<name>/:

- best/         the best trial's best epoch: a plain sentence-transformers folder + metrics.json
- results.csv   one row per trial: sampled config, per-dim MAP@100, status, time
- report.md     best config, base vs best per dim and metric, the trial table, failures
- map_vs_dim.png, importance.png   plots the report shows
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeps.config import SweepConfig
from sweeps.space import optuna_distributions
from sweeps.trainable import OBJECTIVE
from trainers.models import write_matryoshka_info

logger = logging.getLogger(__name__)

# Training state inside a checkpoint that a served model does not need.
TRAINING_STATE = {
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
    "scaler.pt",
    "trainer_state.json",
    "training_args.bin",
}
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
    worker failure hit it (it may have been retried since)."""

    trial_id: str
    config: dict[str, Any]
    reports: list[dict[str, Any]]
    done: bool
    checkpoints: int
    failed_once: bool


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
        reports = [json.loads(line) for line in lines if line.strip()]
        params = folder / "params.json"
        trials.append(
            TrialReports(
                trial_id=folder.name.removeprefix("trial_"),
                config=json.loads(params.read_text()) if params.is_file() else {},
                reports=reports,
                done=bool(reports and reports[-1].get("done")),
                checkpoints=sum(1 for _ in folder.glob("checkpoint_*")),
                failed_once=(folder / "error.txt").is_file(),
            )
        )
    return trials


def trial_table(config: SweepConfig, results) -> list[dict[str, Any]]:
    """One row per trial, with the metrics of its best epoch, its status and its error."""
    params = [p.key for p in config.search]
    first = config.first_points
    rows = []
    for result in results:
        frame = result.metrics_dataframe
        reported = frame is not None and OBJECTIVE in getattr(frame, "columns", [])
        trial_config = result.config or {}
        row: dict[str, Any] = {
            "trial": (result.metrics or {}).get("trial_id") or Path(result.path).name
        }
        row.update({k: trial_config.get(k) for k in params})
        best: dict[str, Any] = {}
        epochs_done = 0
        if reported:
            best = frame.loc[frame[OBJECTIVE].idxmax()].to_dict()
            epochs_done = int(frame["epoch"].max())
        for dim in config.dims:
            row[f"dim_{dim}_map@100"] = _metric(best, f"dim_{dim}", "map@100")
        row[OBJECTIVE] = best.get(OBJECTIVE)
        row["best_epoch"] = int(best["epoch"]) if best else None
        planned = int(trial_config.get("epochs", config.train.epochs))
        if result.error is not None:
            row["status"] = "failed"
            row["error"] = (
                str(result.error).strip().splitlines()[-1][:300]
                if str(result.error).strip()
                else type(result.error).__name__
            )
        elif epochs_done < planned:
            row["status"] = f"stopped by ASHA after {epochs_done}/{planned} epochs"
            row["error"] = ""
        else:
            row["status"] = "completed"
            row["error"] = ""
        row["seconds"] = round(float((result.metrics or {}).get("time_total_s", 0.0)), 1)
        matches = [all(trial_config.get(k) == v for k, v in p.items()) for p in first]
        row["first_point"] = any(matches)
        row["seed_recipe"] = bool(config.seed_recipe and matches and matches[0])
        row["_result"] = result
        row["_best"] = best
        rows.append(row)
    rows.sort(key=lambda r: str(r["trial"]))
    return rows


def _metric(metrics: dict[str, Any], prefix: str, name: str) -> float | None:
    for key, value in metrics.items():
        if (
            key.startswith(prefix + "_")
            and key.endswith("_" + name)
            and key.count("_") == prefix.count("_") + 2
        ):
            return float(value)
    return None


def export_best(
    row: dict[str, Any], out: Path, baseline: dict[str, float], config: SweepConfig
) -> Path | None:
    """Copy the best trial's best checkpoint, less its training state, to out/best."""
    result = row["_result"]
    checkpoint = (
        result.get_best_checkpoint(OBJECTIVE, "max")
        if result.best_checkpoints
        else result.checkpoint
    )
    if checkpoint is None:
        logger.warning("the best trial %s left no checkpoint: no model exported", row["trial"])
        return None
    best = out / "best"
    shutil.rmtree(best, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(checkpoint.to_directory(tmp))
        shutil.copytree(
            source, best, ignore=lambda d, names: [n for n in names if n in TRAINING_STATE]
        )
    metrics = {k: v for k, v in row["_best"].items() if k.startswith(("dim_", "mean_"))}
    write_matryoshka_info(best, config.dims)
    (best / "metrics.json").write_text(
        json.dumps(
            {
                "sweep": config.name,
                "trial": row["trial"],
                "epoch": row["best_epoch"],
                "objective": config.objective,
                "config": config.trial_config({p.key: row[p.key] for p in config.search}).to_dict(),
                "baseline": baseline,
                "final": metrics,
            },
            indent=2,
        )
    )
    return best


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    columns = [k for k in rows[0] if not k.startswith("_")] if rows else []
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def plot_map_vs_dim(
    config: SweepConfig,
    baseline: dict[str, float],
    rows: list[dict[str, Any]],
    best: dict[str, Any] | None,
    path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = list(config.dims)
    fig, ax = plt.subplots(figsize=(6, 4))
    lines = [("base model", [_metric(baseline, f"dim_{d}", "map@100") for d in dims], "o--")]
    seed = next((r for r in rows if r["seed_recipe"] and r[OBJECTIVE] is not None), None)
    if seed is not None:
        lines.append(
            (f"seed recipe ({seed['trial']})", [seed[f"dim_{d}_map@100"] for d in dims], "s-")
        )
    if best is not None:
        lines.append(
            (f"best trial ({best['trial']})", [best[f"dim_{d}_map@100"] for d in dims], "^-")
        )
    for label, values, style in lines:
        ax.plot(dims, values, style, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(dims, [str(d) for d in dims])
    ax.set_xlabel("Matryoshka dim (embedding truncated to)")
    ax.set_ylabel("MAP@100 (cosine)")
    ax.set_title(f"sweep {config.name}: MAP@100 vs dim")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def importances(config: SweepConfig, rows: list[dict[str, Any]]) -> dict[str, float]:
    """Optuna's hyper-parameter importance (fANOVA) over the trials that reported."""
    import optuna

    done = [r for r in rows if r[OBJECTIVE] is not None]
    params = config.search
    if len(done) < 2 or not params:
        return {}
    distributions = optuna_distributions(params)
    study = optuna.create_study(direction="maximize")
    for r in done:
        study.add_trial(
            optuna.trial.create_trial(
                params={p.key: r[p.key] for p in params},
                distributions=distributions,
                value=float(r[OBJECTIVE]),
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


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 else f"{value:.4f}"
    return str(value)


def write_report(config: SweepConfig, rows, baseline, best_row, best_dir, imp, out: Path) -> Path:
    params = [p.key for p in config.search]
    lines = [f"# Sweep `{config.name}`", ""]
    n_failed = sum(r["status"] == "failed" for r in rows)
    n_stopped = sum(r["status"].startswith("stopped") for r in rows)
    lines += [
        f"{len(rows)} trials: {len(rows) - n_failed - n_stopped} completed, {n_stopped} stopped "
        "early by ASHA, "
        f"{n_failed} failed. Objective: `{config.objective}` (maximised).",
        "",
    ]
    if best_row is not None:
        lines += [
            "## Best trial",
            "",
            f"`{best_row['trial']}`, epoch {best_row['best_epoch']}: "
            f"{config.objective} = {_fmt(best_row[OBJECTIVE])}. Model: `{best_dir}`",
            "",
            "| key | value |",
            "|---|---|",
        ]
        lines += [f"| {k} | {_fmt(best_row[k])} |" for k in params]
        lines += [
            "",
            "## Base model vs best model",
            "",
            "| dim | " + " | ".join(f"base {m} | best {m}" for m in TABLE_METRICS) + " |",
            "|---:|" + "---:|" * (2 * len(TABLE_METRICS)),
        ]
        for d in config.dims:
            cells = []
            for m in TABLE_METRICS:
                cells += [
                    _fmt(_metric(baseline, f"dim_{d}", m)),
                    _fmt(_metric(best_row["_best"], f"dim_{d}", m)),
                ]
            lines.append(f"| {d} | " + " | ".join(cells) + " |")
        lines += ["", "![MAP@100 vs dim](map_vs_dim.png)", ""]
    columns = ["trial", *params, *[f"dim_{d}_map@100" for d in config.dims], "status", "seconds"]
    lines += ["## Trials", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        marks = (
            " (seed recipe)" if r["seed_recipe"] else " (first point)" if r["first_point"] else ""
        )
        cells = [
            f"{r[c]:.0f}" if c == "seconds" else _fmt(r[c]) + (marks if c == "trial" else "")
            for c in columns
        ]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        lines += ["", "## Failed trials", ""] + [f"- `{r['trial']}`: {r['error']}" for r in failed]
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


def wandb_online() -> bool:
    return bool(os.environ.get("WANDB_API_KEY"))


def export(config: SweepConfig, results, baseline: dict[str, float], out: Path) -> Summary:
    out.mkdir(parents=True, exist_ok=True)
    rows = trial_table(config, results)
    write_csv(rows, out / "results.csv")
    scored = [r for r in rows if r[OBJECTIVE] is not None]
    best_row = max(scored, key=lambda r: r[OBJECTIVE]) if scored else None
    best_dir = export_best(best_row, out, baseline, config) if best_row else None
    plot_map_vs_dim(config, baseline, rows, best_row, out / "map_vs_dim.png")
    imp = importances(config, rows)
    if imp:
        plot_importance(imp, out / "importance.png")
    report = write_report(config, rows, baseline, best_row, best_dir, imp, out)
    text = [f"report:     {report}", f"results:    {out / 'results.csv'}"]
    if best_dir is not None:
        text.append(f"best model: {best_dir}")
        if (Path(__file__).resolve().parents[1] / "serve" / "app.py").is_file():
            text.append(f"serve it:   python serve/app.py --model {best_dir}")
    else:
        text.append(
            "no trial reported a result: no model exported (see the report's failed trials)"
        )
    if config.wandb:
        text.append(
            f"W&B:        offline runs in {out / 'wandb'} (upload: wandb sync "
            f"{out / 'wandb'}/wandb/offline-run-*)"
            if not wandb_online()
            else f"W&B:        project {config.wandb_project}, group {config.name}"
        )
    return Summary(text="\n".join(text), best_dir=best_dir, out=out)
