"""W&B for a sweep: every trial and the refit are runs of one W&B *Sweep*.

Ray Tune logs each trial as a W&B run (``WandbLoggerCallback``), but a W&B Sweep is made by
W&B's own agents, so Tune's runs never appear on a Sweep page. This module closes that gap:

- **online** (``WANDB_API_KEY`` set): the Sweep is created at the start from the ``search:``
  block (``sweep_spec``), and every run joins it through ``wandb.Settings(sweep_id=...)``
  (never the ``WANDB_SWEEP_ID`` variable: with it set, ``wandb.init`` drops the project and
  Ray's run id). If the server did not attach the agent-less runs, they are attached at the
  end as the Sweep's ``prior_runs`` (the log says which path was taken);
- **offline**: runs are written to runs/<name>/wandb/, the Sweep's config to
  runs/<name>/wandb/sweep.yaml, and ``python sweeps/run.py publish runs/<name>`` later syncs
  the runs and creates the Sweep with them (or reuses the one it made before).

The best trial is tagged ``best`` (a finished run's tags can only change on the server: when
online, at the end; offline, at publish), the refit ``refit`` and the seed recipe's trial
``seed-recipe``. Importing this module imports wandb: only a sweep that logs to W&B does.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import wandb
import yaml
from ray.air.integrations.wandb import WandbLoggerCallback

from sweeps.config import SweepConfig
from sweeps.report import wandb_online
from sweeps.sampler import choose_sampler
from sweeps.space import wandb_parameters
from trainers.errors import ConfigError

logger = logging.getLogger(__name__)

# W&B's sweep methods are its agents' (bayes, random, grid, custom): the closest to our sampler
# names the method; the sampler itself is in the description.
METHODS = {"tpe": "bayes", "gp": "bayes", "qmc": "random", "random": "random"}
MANIFEST = "publish.json"  # runs/<name>/wandb/publish.json: what publish needs to know


online = wandb_online  # one definition (sweeps.report), so that the report needs no wandb


def sweep_spec(config: SweepConfig) -> dict[str, Any]:
    """The W&B sweep config of ``config``: W&B's documented keys, from the search space's one
    translation (sweeps.space.wandb_parameters)."""
    sampler, _ = choose_sampler(config)
    return {
        "name": config.name,
        "description": (
            f"matryoshka-sweeps: Ray Tune trials sampled by Optuna ({sampler}), epochs "
            f"{config.epochs[0]}-{config.epochs[1]} as the budget, ASHA early stopping; the runs "
            "are made by the sweep, not by a W&B agent"
        ),
        "method": METHODS[sampler],
        "metric": {"name": "objective", "goal": "maximize"},
        "parameters": wandb_parameters(config.search),
        "run_cap": config.num_samples,
    }


def start(config: SweepConfig, out: Path) -> str | None:
    """The W&B Sweep the runs join: the one ``wandb_sweep_id`` names, a new one (online), or
    none (offline: sweep.yaml is written for publish). Its id, or None."""
    folder = out / "wandb"
    folder.mkdir(parents=True, exist_ok=True)
    spec = sweep_spec(config)
    (folder / "sweep.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    if config.wandb_sweep_id:
        logger.info("W&B: the runs join the sweep %s", config.wandb_sweep_id)
        sweep_id = config.wandb_sweep_id
    elif not online():
        logger.info(
            "W&B offline: runs in %s; publish them as a W&B Sweep later: python sweeps/run.py "
            "publish %s",
            folder,
            out,
        )
        sweep_id = None
    else:
        sweep_id = wandb.sweep(spec, project=config.wandb_project)
        print(f"W&B sweep:  {sweep_url(config, sweep_id)}", flush=True)
    _write_manifest(out, {"sweep_id": sweep_id, "project": config.wandb_project, "tags": {}})
    return sweep_id


def sweep_id_of(out: Path) -> str | None:
    """The W&B Sweep a sweep's runs join (as ``start`` recorded it; also after --resume)."""
    return _read_manifest(out).get("sweep_id")


def _read_manifest(out: Path) -> dict[str, Any]:
    path = out / "wandb" / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    (out / "wandb" / MANIFEST).write_text(json.dumps(manifest, indent=2))


def sweep_url(config: SweepConfig, sweep_id: str) -> str:
    settings = wandb.Settings(
        entity=os.environ.get("WANDB_ENTITY") or None,
        project=config.wandb_project,
        sweep_id=sweep_id,
    )
    return settings.sweep_url or f"(sweep {sweep_id} in project {config.wandb_project})"


class SweepCallback(WandbLoggerCallback):
    """Ray's W&B callback with the sweep's additions: each run joins the W&B Sweep and carries
    its tags, and a stop (Ctrl-C, SIGTERM) ends the runs it cut short."""

    def __init__(self, *, sweep: SweepConfig, sweep_id: str | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sweep, self.sweep_id = sweep, sweep_id

    def _start_logging_actor(self, trial, exclude_results, **wandb_init_kwargs):
        tags = ["trial"] + (["seed-recipe"] if self.sweep.is_seed(trial.config) else [])
        wandb_init_kwargs["tags"] = tags
        # Plain values, made into Settings in the run's own process: a Settings object made
        # here would carry this process's pid (x_stats_pid) into every trial's run.
        wandb_init_kwargs["settings"] = {"silent": True, "sweep_id": self.sweep_id}
        super()._start_logging_actor(trial, exclude_results, **wandb_init_kwargs)

    def on_experiment_end(self, trials, **info):
        # Trials that a stop (Ctrl-C, SIGTERM) cut short never got log_trial_end: end their
        # W&B runs now, or Ray waits its whole upload_timeout (30 min) for them to end.
        for trial in list(self._trial_queues):
            self._signal_logging_actor_stop(trial=trial)
        super().on_experiment_end(trials, **info)

    def __del__(self):
        # Ray's __del__ calls ray.is_initialized() even at interpreter exit, when module
        # globals are gone; the actors were already cleaned up in on_experiment_end.
        try:
            super().__del__()
        except (AttributeError, TypeError):
            pass


def callback(config: SweepConfig, out: Path, sweep_id: str | None) -> SweepCallback:
    # An explicit dir: without it Ray copies half-written offline runs around.
    return SweepCallback(
        sweep=config,
        sweep_id=sweep_id,
        project=config.wandb_project,
        group=config.name,
        job_type="trial",
        log_config=True,
        dir=str(out / "wandb"),
        mode="online" if online() else "offline",
        # Ray's actor logs through wandb.log, i.e. to the global run: "create_new" would not
        # make the run global (and every log would fail); True is deprecated in wandb 0.31.
        reinit="finish_previous",
    )


def log_refit(config: SweepConfig, verdict, out: Path, sweep_id: str | None) -> str:
    """The refit as a run of its own (job type ``refit``, tag ``refit``, the sweep's group and
    W&B Sweep): its validation metrics per epoch, and its test-split metrics in the summary.
    The refit ran in a Ray task; its epochs are logged here, from the driver. Its run id."""
    run = wandb.init(
        project=config.wandb_project,
        group=config.name,
        job_type="refit",
        name=f"{config.name}-refit",
        tags=["refit"],
        config=verdict.refit_config,
        dir=str(out / "wandb"),
        mode="online" if online() else "offline",
        reinit="create_new",
        settings=wandb.Settings(silent=True, sweep_id=sweep_id),
    )
    for epoch in verdict.refit_epochs:
        numbers = {k: v for k, v in epoch.items() if isinstance(v, (int, float))}
        numbers["objective"] = epoch.get(config.objective)
        run.log(numbers, step=int(epoch["epoch"]))
    run.summary.update({f"test/{k}": v for k, v in verdict.test.get("refit", {}).items()})
    run_id = run.id
    run.finish()
    return run_id


def close_sweep(config: SweepConfig, out: Path, sweep_id: str | None, tags: dict[str, str]) -> str:
    """At the end of the sweep: the publish manifest (run id -> tag), and online the tags and
    the check that the runs are in the Sweep. A line for the console and the report."""
    folder = out / "wandb"
    manifest = {**_read_manifest(out), "sweep_id": sweep_id, "project": config.wandb_project}
    manifest["tags"] = tags
    _write_manifest(out, manifest)
    if not online():
        return (
            f"W&B:        offline runs in {folder}; publish them as a W&B Sweep: python "
            f"sweeps/run.py publish {out}"
        )
    api = wandb.Api()
    entity = api.default_entity
    for run_id, tag in tags.items():
        _tag(api, f"{entity}/{config.wandb_project}/{run_id}", tag)
    if sweep_id:
        sweep_id = _attached_or_prior_runs(api, config, entity, sweep_id, out)
    return f"W&B sweep:  {sweep_url(config, sweep_id)}" if sweep_id else "W&B: online"


def _tag(api, path: str, tag: str) -> None:
    try:
        run = api.run(path)
        if tag not in run.tags:
            run.tags = [*run.tags, tag]
            run.update()
    except Exception as err:  # a missing tag must not fail a finished sweep
        logger.warning("W&B: could not tag %s %r: %s", path, tag, err)


def _attached_or_prior_runs(api, config: SweepConfig, entity: str, sweep_id: str, out: Path) -> str:
    """The Sweep that holds the runs: ``sweep_id`` if the server attached the agent-less runs,
    else a new Sweep created with them as its prior runs (logged either way)."""
    ids = _run_ids(out / "wandb")
    attached = {run.id for run in api.sweep(f"{entity}/{config.wandb_project}/{sweep_id}").runs}
    missing = sorted(set(ids) - attached)
    if not missing:
        logger.info(
            "W&B: the server attached all %d runs to sweep %s as they ran", len(ids), sweep_id
        )
        return sweep_id
    logger.warning(
        "W&B: the server did not attach %d runs made without an agent; creating a sweep with "
        "them as prior runs",
        len(missing),
    )
    return wandb.sweep(sweep_spec(config), project=config.wandb_project, prior_runs=ids)


def _run_ids(folder: Path) -> list[str]:
    """The ids of the runs written under ``folder`` (run-<id>.wandb files)."""
    return sorted({p.stem.removeprefix("run-") for p in folder.rglob("run-*.wandb")})


def publish(out: Path) -> str:
    """Upload an offline sweep's runs and make them a W&B Sweep (reusing the one an earlier
    publish made); its URL. Safe to run twice: synced runs are skipped."""
    folder = out / "wandb"
    runs = sorted(folder.glob("wandb/offline-run-*"))
    if not (folder / "sweep.yaml").is_file() or not runs:
        raise ConfigError(
            f"{out}: nothing to publish (no offline W&B runs in {folder}/wandb): run a sweep "
            "with W&B on and no WANDB_API_KEY first"
        )
    if not os.environ.get("WANDB_API_KEY"):
        raise ConfigError("publishing needs WANDB_API_KEY in the environment (never in a file)")
    spec = yaml.safe_load((folder / "sweep.yaml").read_text())
    manifest = _read_manifest(out)
    project = manifest.get("project") or "matryoshka-sweeps"
    # `wandb sync` skips the runs it synced before (their .synced marker): no duplicates.
    subprocess.run(
        [sys.executable, "-m", "wandb", "sync", "--yes", "-p", project, *map(str, runs)],
        check=True,
    )
    api = wandb.Api()
    entity = api.default_entity
    sweep_id = manifest.get("published_sweep_id") or _existing_sweep(api, entity, project, spec)
    if sweep_id is None:
        sweep_id = wandb.sweep(spec, project=project, prior_runs=_run_ids(folder))
    for run_id, tag in manifest.get("tags", {}).items():
        _tag(api, f"{entity}/{project}/{run_id}", tag)
    manifest["published_sweep_id"] = sweep_id
    _write_manifest(out, manifest)
    return api.sweep(f"{entity}/{project}/{sweep_id}").url


def _existing_sweep(api, entity: str, project: str, spec: dict) -> str | None:
    try:
        for sweep in api.project(project, entity).sweeps():
            if sweep.name == spec["name"]:
                return sweep.id
    except Exception:  # a project without sweeps
        return None
    return None
