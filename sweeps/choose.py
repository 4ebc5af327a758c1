"""Choosing from a finished search: one typed row per trial, the best one and the seed recipe.

The sweep builds the rows from Tune's results in the middle of its run (``trial_table``), picks
the trial to refit and the seed recipe to compare with, and hands the same rows to the report
(sweeps/report.py), which only renders them. ``trial_row`` is the whole rule and needs no Ray:
a trial's chosen epoch is its best reported epoch among those the sweep may choose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeps.config import SweepConfig
from sweeps.finish import Pick
from sweeps.trainable import OBJECTIVE, SELECTION


@dataclass
class TrialRow:
    """One trial: its sampled values, its chosen epoch with that epoch's validation metrics,
    its status, and the checkpoint of the chosen epoch (``pick``, None if it left none)."""

    trial: str
    params: dict[str, Any]  # the sampled value of every search key
    chosen_epochs: int | None
    map_at: dict[int, float | None]  # validation MAP@100 of the chosen epoch, by dim
    objective: float | None
    status: str
    error: str
    seconds: float
    first_point: bool
    seed_recipe: bool
    pick: Pick | None = field(default=None, repr=False)

    @property
    def scored(self) -> bool:
        return self.objective is not None and bool(self.chosen_epochs)

    def columns(self) -> dict[str, Any]:
        """The row as results.csv and the report's trial table have it, in column order."""
        return {
            "trial": self.trial,
            **self.params,
            "chosen_epochs": self.chosen_epochs,
            **{f"dim_{d}_map@100": v for d, v in self.map_at.items()},
            OBJECTIVE: self.objective,
            "status": self.status,
            "error": self.error,
            "seconds": self.seconds,
            "first_point": self.first_point,
            "seed_recipe": self.seed_recipe,
        }


def trial_row(
    config: SweepConfig,
    trial: str,
    sampled: dict[str, Any],
    reports,
    error: BaseException | None = None,
    seconds: float = 0.0,
) -> TrialRow:
    """The row of one trial from its reports (a DataFrame with a row per reported epoch, or
    None if it reported nothing). Its chosen epoch is the one with the best ``SELECTION``
    among the epochs the sweep may choose (those reported with SELECTION > -1)."""
    reported = reports is not None and SELECTION in getattr(reports, "columns", [])
    best: dict[str, Any] = {}
    epochs_done = 0
    if reported:
        epochs_done = int(reports["epoch"].max())
        choosable = reports[reports[SELECTION] > -1]
        if len(choosable):
            best = choosable.loc[choosable[SELECTION].idxmax()].to_dict()
    seed = config.is_seed(sampled)
    planned = config.seed_epochs if seed else config.max_epochs
    if error is not None:
        status = "failed"
        text = str(error).strip()
        message = text.splitlines()[-1][:300] if text else type(error).__name__
    elif epochs_done < planned:
        status, message = f"stopped by ASHA after {epochs_done}/{planned} epochs", ""
    else:
        status, message = f"completed {epochs_done}/{planned} epochs", ""
    return TrialRow(
        trial=trial,
        params={p.key: sampled.get(p.key) for p in config.search},
        chosen_epochs=int(best["epoch"]) if best else None,
        map_at={d: _metric(best, f"dim_{d}", "map@100") for d in config.dims},
        objective=best.get(OBJECTIVE),
        status=status,
        error=message,
        seconds=round(float(seconds), 1),
        first_point=any(dict(sampled) == dict(p) for p in config.first_points),
        seed_recipe=seed,
    )


def trial_table(config: SweepConfig, results) -> list[TrialRow]:
    """One row per trial of Tune's ``results`` (a ResultGrid), sorted by trial id, each with
    the checkpoint of its chosen epoch."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        row = trial_row(
            config,
            metrics.get("trial_id") or Path(result.path).name,
            result.config or {},
            result.metrics_dataframe,
            result.error,
            metrics.get("time_total_s", 0.0),
        )
        if row.chosen_epochs and result.best_checkpoints:
            checkpoint = result.get_best_checkpoint(SELECTION, "max")
            row.pick = Pick(row.trial, dict(result.config), row.chosen_epochs, checkpoint)
        rows.append(row)
    rows.sort(key=lambda r: str(r.trial))
    return rows


def best(rows: list[TrialRow]) -> TrialRow | None:
    """The trial with the best objective (None if no trial reported one)."""
    scored = [r for r in rows if r.scored]
    return max(scored, key=lambda r: r.objective) if scored else None


def seed_recipe(rows: list[TrialRow]) -> TrialRow | None:
    """The seed recipe's trial, if the sweep ran one."""
    return next((r for r in rows if r.seed_recipe), None)


def _metric(metrics: dict[str, Any], prefix: str, name: str) -> float | None:
    for key, value in metrics.items():
        if (
            key.startswith(prefix + "_")
            and key.endswith("_" + name)
            and key.count("_") == prefix.count("_") + 2
        ):
            return float(value)
    return None
