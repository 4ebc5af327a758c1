"""The exported model's own record: metrics.json and the model card's tables in best/.

Written by the finish (sweeps/finish.py) before it publishes the folder, so best/ has one
writer and is copied to its storage once. ``dim_table`` is shared with the report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeps.config import SweepConfig
from trainers import precision
from trainers.gate import gate_table

if TYPE_CHECKING:  # finish imports this module: the types only, to keep imports one-way
    from sweeps.finish import Pick, Verdict


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 else f"{value:.4f}"
    return str(value)


def dim_table(config: SweepConfig, models: dict[str, dict[str, float]], metric: str) -> list[str]:
    """A Markdown table: one row per dim, one column per model, of ``metric``."""
    labels = list(models)
    lines = [
        "| dim | " + " | ".join(labels) + " |",
        "|---:|" + "---:|" * len(labels),
    ]
    for d in config.dims:
        cells = [fmt(models[label].get(f"dim_{d}_cosine_{metric}")) for label in labels]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return lines


def precision_lines(record: dict[str, Any], plot: str | None = None) -> list[str]:
    """The output-precision section (model card, report): the precision x dim table of the
    backend served on a CPU, the recommended dim, and what a request may ask for."""
    backend = precision.cpu_backend(record)
    entry = record["backends"][backend]
    lines = [
        "## Smaller vectors (output precisions)",
        "",
        f"MAP@100 on the validation split ({record['task']}) of each output precision at each "
        f"dim, through the {backend} backend (what `--backend auto` serves on a CPU), searched "
        "as sentence-transformers' quantized search does (int8/uint8: inner product of the "
        "codes; binary: Hamming; rescored: the Hamming top "
        f"{record['rescore_multiplier']} x 100 re-ranked by the float query). A precision is "
        f"served at a dim only within {record['tolerance']} MAP@100 of torch float32 at that "
        "dim; (no) marks where it is refused (400) unless the server runs with "
        "--allow-ungated. int8/uint8 are calibrated on "
        f"{record['calibration_passages']} training passages.",
        "",
        *precision.precision_table(record, backend),
        "",
        f"**Recommended:** {precision.describe_recommended(entry['recommended'])}.",
    ]
    if "undecided" in record:
        lines += ["", f"Not gated: too few validation queries ({record['undecided']})."]
    if plot:
        lines += ["", f"![MAP@100 vs bytes per vector]({plot})"]
    return lines


def write_model_files(best: Path, config: SweepConfig, verdict: Verdict, pick: Pick) -> None:
    """metrics.json and the model card's test and backend tables in the exported folder ``best``
    (its matryoshka.json, with the dims and the backends' gate, was written with it). The
    finish writes them before it publishes the folder: nothing edits best/ afterwards."""
    exported = verdict.test.get(verdict.exported, {})
    trained = verdict.refit_config if verdict.kept == "refit" else None
    if trained is None:
        sampled = {p.key: pick.sampled.get(p.key) for p in config.search}
        trained = config.trial_config(sampled, epochs=pick.epoch).to_dict()
    (best / "metrics.json").write_text(
        json.dumps(
            {
                "sweep": config.name,
                "trial": pick.trial,
                "exported": verdict.exported,
                "mix_factor": verdict.mix,
                "objective": config.objective,
                "config": trained,
                "refit_config": verdict.refit_config,
                "refit_negatives": verdict.negatives,
                "validation": verdict.validation,
                "test": verdict.test,
                "guard": verdict.guard,
                "guard_roles": verdict.guard_roles,
                "guard_tasks": verdict.guard_tasks,
                "guard_held": verdict.guard_held,
                "mixes": verdict.mixes,
                "backends": verdict.backends,
                "precisions": verdict.precisions,
                "data": verdict.data,
                "finish_seconds": verdict.seconds,
                "final": exported,
            },
            indent=2,
        )
    )
    card = best / "README.md"
    text = card.read_text() if card.is_file() else f"# {config.name}\n"
    section = [
        "",
        "## Matryoshka sweep: held-out test split",
        "",
        f"Sweep `{config.name}`; exported: {verdict.exported}. {verdict.test_task}. MAP@100:",
        "",
        *dim_table(config, verdict.test, "map@100"),
        "",
    ]
    if verdict.backends:
        section += [
            "## Serving backends (quality gate)",
            "",
            f"MAP@100 and NDCG@10 on the validation split through each backend ("
            f"{verdict.backends['task']}); servable by default "
            f"only within {verdict.backends['tolerance']} MAP@100 of torch fp32 at every dim.",
            "",
            *gate_table(verdict.backends, list(config.dims)),
            "",
        ]
    if verdict.precisions:
        section += [*precision_lines(verdict.precisions), ""]
    card.write_text(text.rstrip() + "\n" + "\n".join(section))
