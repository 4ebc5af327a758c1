"""Search learning rate, batch size, epochs and Matryoshka weights with Ray Tune + Optuna.

    python sweeps/run.py                                   # the embedded default, local Ray
    python sweeps/run.py --config sweeps/configs/local.yaml --name try2 --num-samples 8
    python sweeps/run.py --name try2 --resume              # continue an interrupted sweep
    python sweeps/run.py --smoke-test                      # tiny model, 4 trials, about a minute
    python sweeps/run.py publish runs/local                # an offline sweep -> a W&B Sweep
    python sweeps/run.py --max_pairs 2000 --epochs 2       # any trainers key fixes that value
    RAY_ADDRESS=auto python sweeps/run.py --config sweeps/configs/cluster.yaml   # on a cluster

Each trial runs trainers.train (MatryoshkaLoss over MNRL) and reports every dim's metrics
after each epoch to Tune (OptunaSearch samples, ASHA stops weak trials) and to W&B (one run
per trial, grouped by sweep; offline files in runs/<name>/wandb/ when WANDB_API_KEY is
unset). At the end runs/<name>/ holds best/ (the best model), results.csv, report.md and
plots, and the command to serve the best model is printed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import sweeps
from sweeps import config as sweep_config
from sweeps.config import SweepConfig
from trainers import cli
from trainers.config import TrainConfig, parse_overrides
from trainers.errors import ConfigError


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        epilog="Any other --key value sets a sweep key or fixes a trainers key "
        "(python -m trainers.train --help).",
    )
    parser.add_argument(
        "--config", default=str(sweeps.DEFAULT_CONFIG), help="sweep YAML (default: %(default)s)"
    )
    parser.add_argument("--name", help="sweep name: results in <storage_path>/<name>/")
    parser.add_argument("--num-samples", type=int, help="number of trials")
    parser.add_argument(
        "--resume", action="store_true", help="continue the sweep <name> where it stopped"
    )
    parser.add_argument(
        "--smoke-test", action="store_true", help="tiny random model, tiny data, 4 trials"
    )
    parser.add_argument("--no-wandb", action="store_true", help="do not log to W&B")
    parser.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="Ray cluster to join (default: $RAY_ADDRESS, else the cluster on this machine, "
        "e.g. a `ray up` head node, else a private local Ray; `local` forces the private one)",
    )
    return parser.parse_known_args(argv)


def smoke_overrides() -> dict[str, Any]:
    """A sweep of the same shape in about a minute: the tiny model on a sliver of data."""
    return {
        "train": {
            "model": "bundled:tiny",
            "data": "debian",
            "matryoshka_dims": [384, 128, 64],
            "max_pairs": 48,
            "eval_size": 60,
            "test_size": 60,
            "max_seq_length": 32,
            "eval_batch_size": 64,
            # The tiny model is untrained: it scores every passage alike, so a relative margin
            # would filter every candidate. Mining without one tests the path.
            "hard_negatives": {"num_negatives": 1, "relative_margin": None, "pool": 2000},
        },
        "refit": {"max_pairs": 96},
        "guard": {
            "choose": [
                {"data": "wordnet", "max_pairs": 120, "max_queries": 40},
                {"data": "vim-faq", "max_pairs": 120, "max_queries": 40},
            ],
            "verify": [{"data": "unix-faqs", "max_pairs": 120, "max_queries": 40}],
            "mix": [0.5, 1.0],
        },
        "search": {
            "learning_rate": {"loguniform": [1.0e-5, 1.0e-2]},
            "batch_size": {"choice": [8, 16, 32]},
            "epochs": {"randint": [1, 4]},
            "matryoshka_weights": {"uniform": [0.5, 2.0]},
        },
        "seed_recipe": True,
        "points_to_evaluate": [
            {"learning_rate": 1e-3, "batch_size": 16, "matryoshka_weights": 1.0}
        ],
        "num_samples": 4,
        "max_concurrent_trials": 2,
        "cpus_per_trial": 1.0,
        "gpus_per_trial": 0.0,
    }


def load_config(args: argparse.Namespace, extra: list[str]) -> SweepConfig:
    """The YAML, then the smoke test's values, then the command line's: parsed once."""
    fields = {**sweep_config.CLI_FIELDS, **TrainConfig.model_fields}
    overrides = parse_overrides(extra, fields)
    raw = sweep_config.read_yaml(args.config)
    if args.smoke_test:
        raw.update(smoke_overrides(), name=time.strftime("smoke-%Y%m%d-%H%M%S"))
    if args.name:
        overrides["name"] = args.name
    if args.num_samples is not None:
        overrides["num_samples"] = args.num_samples
    if args.no_wandb:
        overrides["wandb"] = False
    return sweep_config.parse(sweep_config.apply_overrides(raw, overrides))


def check_model_dims(config: SweepConfig) -> None:
    """Dims that do not fit the model fail here, before Ray starts."""
    from trainers.models import check_dims, declared_dim

    dim = declared_dim(config.train.model)
    if dim is not None:
        check_dims(config.dims, dim, config.train.model)


def check_storage(config: SweepConfig) -> None:
    """The cluster configs ship a placeholder bucket: fail before Ray, naming the fix."""
    if "YOUR-BUCKET" in config.storage_path:
        raise ConfigError(
            f"storage_path={config.storage_path!r} is the placeholder of the shipped config: pass "
            "--storage_path s3://<your bucket>/matryoshka-sweeps (shared storage every node can "
            "write)"
        )


STOPPED = (128 + signal.SIGINT, 128 + signal.SIGTERM)


def publish_main(argv: list[str]) -> int:
    """``python sweeps/run.py publish runs/<name>``: upload an offline sweep as a W&B Sweep."""
    if len(argv) != 1 or argv[0].startswith("-"):
        raise ConfigError("usage: python sweeps/run.py publish runs/<name>")
    folder = Path(argv[0])
    if not (folder / "wandb").is_dir():
        raise ConfigError(f"{folder}: not a sweep folder with W&B runs (runs/<name>/wandb/)")
    from sweeps import wandb_sweep

    print(f"W&B sweep: {wandb_sweep.publish(folder)}")
    return 0


def _main(argv: list[str]) -> int:
    if argv[:1] == ["publish"]:
        cli.setup_logging()
        return publish_main(argv[1:])
    args, extra = parse_args(argv)
    cli.setup_logging()
    config = load_config(args, extra)
    check_model_dims(config)
    check_storage(config)
    from trainers.data import describe_fingerprint, load_split

    # Fails fast on bad data (and builds the Debian cache once, not in every trial).
    split = load_split(config.train)
    print(f"data: {describe_fingerprint(split.fingerprint)}", flush=True)
    try:
        summary = sweeps.run_sweep(
            config, resume=args.resume, address=args.address, stop_deadline_s=cli.STOP_DEADLINE_S
        )
    except KeyboardInterrupt as interrupt:
        print("\ninterrupted: continue the sweep with --resume", flush=True)
        return cli.exit_code(interrupt)
    print()
    print(summary.text)
    if summary.stopped_by is not None:
        return 128 + summary.stopped_by  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM
    return 0 if summary.best_dir else 1


def main(argv: list[str] | None = None) -> int:
    """``python sweeps/run.py`` and ``matryoshka-sweep``: bad config, data or model exits 2."""
    code = cli.run(_main, argv)
    if code in STOPPED:
        # Stopped by a signal, everything saved and Ray's processes ended: leave now. The
        # interpreter's own exit (finalising torch, Ray's and W&B's modules) took seconds
        # more, past the 5 s a service manager gives before it kills.
        cli.exit_now(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
