"""Run a sweep on Ray Tune: OptunaSearch (TPE, seeded) + ASHA, W&B per trial, resume, export.

Only the current ``ray.tune`` API is used (Tuner, TuneConfig, RunConfig, tune.report,
tune.Checkpoint, tune.get_checkpoint): ``ray.train.report`` inside Tune is an error in Ray
2.60. ``python sweeps/run.py`` is the entry point; this module holds the Ray side.
"""

from __future__ import annotations

import os

# Ray folds worker lines that differ only in their numbers into one ("[repeated 3x across
# cluster]"): the trials' one line per epoch each would be folded away. Ray reads this when
# it is imported, so before any import of it.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

# isort: split
import contextlib
import dataclasses
import importlib
import json
import logging
import signal
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

from sweeps import choose
from sweeps.config import SweepConfig
from sweeps.finish import Pick, Verdict, finish
from sweeps.report import Summary, export, wandb_online
from sweeps.search import make_scheduler, make_searcher
from sweeps.space import tune_space
from sweeps.trainable import FAULT_ENV, OBJECTIVE, SELECTION, run_trial
from trainers import cli, storage
from trainers.errors import ConfigError

logger = logging.getLogger(__name__)


def sweep_dir(config: SweepConfig) -> Path | str:
    """Where Tune keeps the sweep: a local folder (absolute) or a URI (s3://...)."""
    if storage.is_uri(config.storage_path):
        return f"{config.storage_path.rstrip('/')}/{config.name}"
    return Path(config.storage_path).resolve() / config.name


def local_dir(config: SweepConfig) -> Path:
    """Where the report, best model and W&B files go on this machine."""
    if storage.is_uri(config.storage_path):
        return Path("runs").resolve() / config.name
    return Path(sweep_dir(config))


def running_cluster_address() -> str | None:
    """The address of a live Ray cluster started on this machine with `ray start` (a head)."""
    # The same lookup ray.init(address=None) makes (Ray's private helpers; no public API exists),
    # kept separate so that a stale ray_current_cluster file of a killed cluster is ignored.
    from ray._private import services

    address = services.find_bootstrap_address(None)
    if address and address in services.find_gcs_addresses():
        return address
    return None


# Ray relays every worker's output to the sweep's console line by line, so progress bars and
# W&B's run summaries become floods of lines. tqdm reads TQDM_DISABLE when it is imported, so
# it must be in the workers' environment from their start (setting it in a trial is too late).
# The sweep's progress view is Tune's status table plus one line per trial per epoch.
WORKER_ENV = {"TQDM_DISABLE": "1", "WANDB_SILENT": "true"}


def init_ray(address: str | None) -> bool:
    """Join the Ray cluster at ``address``; else the one on this machine; else start a private
    one (True: the caller stops it). ``address="local"`` always starts a private Ray, even on a
    cluster's head node. A Ray this process has already initialised is used as it is.
    """
    import ray

    if ray.is_initialized():
        return False
    if address is None:
        address = running_cluster_address()
        if address:
            logger.info(
                "joining the Ray cluster started on this machine at %s "
                "(--address local for a private one)",
                address,
            )
    # The sweep's own environment for every worker (trials, the baseline task, W&B's actors).
    runtime_env = {"env_vars": WORKER_ENV}
    if address and address != "local":
        logger.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, runtime_env=runtime_env)
        return False
    # A local Ray for this process alone; it stops when the sweep ends.
    ray.init(
        address="local",
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        log_to_driver=True,
        runtime_env=runtime_env,
    )
    return True


def baseline_metrics(
    config: SweepConfig, out: Path, given: Mapping[str, float] | None = None
) -> dict[str, float]:
    """The base model's metrics, computed once per sweep on a trial's resources and cached
    (``given``: the caller computed them already)."""
    import ray

    from trainers.train import evaluate_baseline

    cache = out / "baseline.json"
    if given is not None:
        out.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(dict(given), indent=2))
        return dict(given)
    if cache.is_file():
        return json.loads(cache.read_text())
    task = ray.remote(num_cpus=config.cpus_per_trial, num_gpus=config.gpus_per_trial)(
        evaluate_baseline
    )
    logger.info("evaluating the base model once for the whole sweep")
    metrics = ray.get(task.remote(config.train, progress=False))
    out.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(metrics, indent=2))
    return metrics


def trial_dirname(trial) -> str:
    """trial_<id>: Tune's default name repeats every sampled value and gets very long."""
    return f"trial_{trial.trial_id}"


def configure_wandb_mode(config: SweepConfig) -> None:
    """Offline unless an API key is set. Needed for new sweeps and for restored ones, whose
    pickled callback asks for an API key unless WANDB_MODE says offline."""
    if config.wandb and not wandb_online():
        os.environ.setdefault("WANDB_MODE", "offline")


def build_trainable(config: SweepConfig, baseline: dict[str, float]):
    from ray import tune

    # The typed config crosses to the trials as it is: no trial re-parses it.
    trainable = tune.with_parameters(
        run_trial, sweep=config, baseline=baseline, fault=os.environ.get(FAULT_ENV) or None
    )
    return tune.with_resources(
        trainable, {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial}
    )


# Tune warns whenever several trials report within 5 s of each other (small models do): the
# warning is about its own snapshot cost, which is negligible at a sweep's scale.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def run_sweep(
    config: SweepConfig,
    resume: bool = False,
    address: str | None = None,
    baseline: Mapping[str, float] | None = None,
    stop_deadline_s: float | None = None,
) -> Summary:
    out = local_dir(config)
    path = sweep_dir(config)
    configure_wandb_mode(config)
    pin_data(config, out)
    # The trainer's imports (torch, sentence-transformers: seconds), which the trainable and
    # the baseline task below need, run while Ray starts (`git show 7a36ba9`).
    preload = threading.Thread(target=importlib.import_module, args=("trainers.train",))
    preload.start()
    private_ray = init_ray(address)
    preload.join()
    try:
        with graceful_stop(stop_deadline_s) as stopped_by:
            baseline = baseline_metrics(config, out, baseline)
            if not resume:
                mine_negatives(config, out)
            trainable = build_trainable(config, baseline)
            if resume:
                tuner = restored_tuner(path, trainable)
            else:
                callbacks = []
                if config.wandb:
                    from sweeps import wandb_sweep  # imports wandb: only when it logs

                    sweep_id = wandb_sweep.start(config, out)
                    callbacks.append(wandb_sweep.callback(config, out, sweep_id))
                tuner = new_tuner(config, trainable, callbacks)
            results = tuner.fit()
        if stopped_by:
            name = signal.Signals(stopped_by[0]).name
            return Summary(
                text=f"{name}: the sweep stopped; its finished trials and checkpoints are "
                f"saved in {path}. Continue it with: python sweeps/run.py --name {config.name} "
                f"--resume (with the same --config and options)",
                best_dir=None,
                out=out,
                stopped_by=stopped_by[0],
            )
        rows = choose.trial_table(config, results)
        best_row = choose.best(rows)
        best = best_row.pick if best_row is not None else None
        verdict = None
        if best is not None:
            seed_row = choose.seed_recipe(rows)
            seed = seed_row.pick if seed_row is not None else None
            with cli.terminate_as_interrupt():
                verdict = run_finish(config, best, seed, baseline, f"{path}/best")
            if storage.is_uri(path):  # a copy here too, to serve or inspect
                storage.replace_folder(f"{path}/best", out / "best")
        wandb_line = None
        if config.wandb:
            wandb_line = log_to_wandb(config, out, best_row, verdict)
        summary = export(config, rows, best_row, verdict, out, wandb_line)
    finally:
        if private_ray:
            import ray

            cli.stop_ray(ray.shutdown)
    if storage.is_uri(path) and summary.best_dir is not None:
        upload_report(out, str(path))
        summary = dataclasses.replace(
            summary, text=f"{summary.text}\nin storage: {path}/best (and the report)"
        )
    return summary


def pin_data(config: SweepConfig, out: Path) -> None:
    """The pairs this sweep reads, in ``runs/<name>/data/pairs.jsonl``: the default data set is
    rebuilt from the day's package lists and a hub data set can change, so the run's own copy
    is what reproduces its splits elsewhere (the report says how). A file is its own record."""
    from trainers.data import BUILT_IN, save_pairs

    target = out / "data" / "pairs.jsonl"
    source = config.train.data
    if (source in BUILT_IN or not Path(source).expanduser().is_file()) and not target.is_file():
        save_pairs(config.train, target)


def node_task_resources(config: SweepConfig) -> dict[str, float]:
    """A task's resources when no trial runs beside it: a trial's GPU share on a cluster;
    without GPUs, every CPU the sweep's trials use that one node can give."""
    import ray

    if config.gpus_per_trial > 0:
        return {"num_cpus": config.cpus_per_trial, "num_gpus": config.gpus_per_trial}
    # A task runs on one node: asking for the cluster's total CPU on a cluster of small
    # nodes would leave it infeasible for ever. A trial's share always fits (a trial ran).
    largest = max(
        (n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=0.0
    )
    cpus = min(config.cpus_per_trial * config.max_concurrent_trials, largest)
    return {"num_cpus": max(cpus, config.cpus_per_trial)}


def mine_negatives(config: SweepConfig, out: Path) -> list[dict] | None:
    """With ``train.hard_negatives``, the negatives of the trials' pairs and of the refit's,
    mined once before the trials start, on every core a node gives (trainers.negatives): the
    trials and the refit then read the cache (on a cluster, each node's own: a node whose
    cache lacks them mines once, under the cache's lock). The records go to negatives.json."""
    if config.train.hard_negatives is None:
        return None
    import ray

    from trainers.negatives import describe, mine_for

    configs = [config.train]
    if config.refit is not None:
        configs.append(config.train.replace(max_pairs=config.refit.max_pairs))
    task = ray.remote(**node_task_resources(config))(mine_for)
    records = ray.get(task.remote(configs))
    for record in records:
        print(f"hard negatives: {describe(record)}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "negatives.json").write_text(json.dumps(records, indent=2))
    return records


def run_finish(
    config: SweepConfig, best: Pick, seed: Pick | None, baseline: dict, destination: str
) -> Verdict:
    """sweeps.finish.finish as a Ray task on a trial's resources: a GPU worker on a cluster;
    without GPUs, every CPU the sweep used (the trials are done) that one node can give."""
    import ray

    resources = node_task_resources(config)
    logger.info(
        "after the search: refit, test split%s (%s)",
        ", guard set and mixing" if config.guard else "",
        resources,
    )
    task = ray.remote(**resources)(finish)
    return ray.get(task.remote(config, best, seed, baseline, destination))


def log_to_wandb(
    config: SweepConfig, out: Path, best_row: choose.TrialRow | None, verdict: Verdict | None
) -> str:
    """The refit's W&B run, the tags, the W&B Sweep's final state: the console's W&B line."""
    from sweeps import wandb_sweep

    sweep_id = wandb_sweep.sweep_id_of(out)
    tags = {best_row.trial: "best"} if best_row is not None else {}
    if verdict is not None and verdict.refit_epochs:
        tags[wandb_sweep.log_refit(config, verdict, out, sweep_id)] = "refit"
    return wandb_sweep.close_sweep(config, out, sweep_id, tags)


def restored_tuner(path: Path | str, trainable):
    from ray import tune

    if not tune.Tuner.can_restore(str(path)):
        raise ConfigError(f"nothing to resume at {path}; run without --resume first")
    logger.info(
        "resuming %s: finished trials stay, unfinished ones continue from their checkpoint", path
    )
    return tune.Tuner.restore(
        str(path), trainable=trainable, resume_unfinished=True, resume_errored=False
    )


def new_tuner(config: SweepConfig, trainable, callbacks: list):
    from ray import tune

    out, path = local_dir(config), sweep_dir(config)
    if not storage.is_uri(path) and tune.Tuner.can_restore(str(path)):
        raise ConfigError(f"{path} already holds a sweep: pass --resume, or a new --name")
    searcher = make_searcher(config, OBJECTIVE)
    scheduler = make_scheduler(config)
    tuner = tune.Tuner(
        trainable,
        param_space=tune_space(config.search),
        tune_config=tune.TuneConfig(
            # metric and mode go to OptunaSearch AND here (Ray 2.60 wants both to agree).
            metric=OBJECTIVE,
            mode="max",
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=config.num_samples,
            max_concurrent_trials=config.max_concurrent_trials,
            # One process runs trial after trial: no new worker, imports or data loading per
            # trial (sweeps.trainable.fresh_process_state starts each one clean).
            reuse_actors=config.reuse_actors,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=config.name,
            storage_path=str(path).rsplit("/", 1)[0]
            if storage.is_uri(path)
            else str(Path(path).parent),
            callbacks=callbacks,
            checkpoint_config=tune.CheckpointConfig(
                # Tune also saves the experiment state every num_to_keep checkpoints of a
                # trial, and deletes a checkpoint that falls out of the best at once: at 2, a
                # SIGKILL between the two left a state naming a deleted checkpoint as a trial's
                # latest, and --resume failed that trial ("does not exist on storage anymore").
                num_to_keep=config.checkpoints_to_keep,
                # the chosen epoch's checkpoint must survive: score by what chooses it
                checkpoint_score_attribute=SELECTION,
                checkpoint_score_order="max",
            ),
            failure_config=tune.FailureConfig(max_failures=config.max_failures),
            verbose=1,
        ),
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(config.to_dict(), indent=2))
    return tuner


@contextlib.contextmanager
def graceful_stop(deadline_s: float | None = None) -> Iterator[list[int]]:
    """Inside the block, Ctrl-C (SIGINT) and SIGTERM stop the sweep so that it can be resumed.

    The first one asks Tune to stop (SIGUSR1, Tune's own graceful stop: it ends the trials and
    writes the experiment state, so --resume continues from the last checkpoints) and is
    recorded in the yielded list; before Tune runs, or at a second signal, it is a
    KeyboardInterrupt. Tune's own SIGINT handler is turned off so that both signals take this
    one path (ray.init installs a SIGTERM handler that exits without saving anything).
    ``deadline_s``: the process ends that long after the first signal, whatever the stop
    still waits on (cli.bound_the_stop), with the signal's exit code.
    """
    received: list[int] = []

    def stop(signum, frame):
        tune_listens = callable(signal.getsignal(signal.SIGUSR1))
        if received or not tune_listens:
            raise cli.Stopped(signum)
        received.append(signum)
        logger.warning("%s: stopping the sweep (resumable)", signal.Signals(signum).name)
        if deadline_s is not None:
            # Tune writes the experiment state at once, within a fraction of a second; ending
            # Ray then takes seconds, once longer than the deadline. Past the deadline what is
            # left is killed, and the sweep resumes from that state.
            cli.bound_the_stop(
                deadline_s,
                cli.ray_descendants(),
                code=128 + signum,
                note="interrupted: continue the sweep with --resume",
            )
        os.kill(os.getpid(), signal.SIGUSR1)

    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def upload_report(out: Path, uri: str) -> None:
    """Put the report next to the trials and the best model (the finish uploaded best/)."""
    for item in ("report.md", "results.csv", "map_vs_dim.png", "importance.png"):
        if (out / item).exists():
            storage.copy(out / item, f"{uri}/{item}")
    logger.info("report uploaded to %s; serve the model with --model %s/best", uri, uri)
