"""Quality: the whole pipeline (sweep, refit, guard mixing) against the seed recipe at the same
training budget, on the sweep's held-out test split.

    python benchmarks/quality.py                     # --sweep runs/local: run `make run` first
    python benchmarks/quality.py --sweep runs/try2   # another finished sweep
    python benchmarks/quality.py --smoke             # a smoke sweep of its own, then the same

The pipeline's model is the sweep's export (runs/<sweep>/best): the best trial's configuration
refit on a larger budget (kept if it beat the best trial on validation), mixed with the
base model in weight space if the guard set asked for it. Its rival is what a user would get
without the sweep: the published models' seed recipe (lr 2e-5, batch 32, all Matryoshka
weights 1) trained on the **same pairs for the same epochs** as the refit. Both, and the
base model, are scored by trainers' evaluator on the sweep's test split (packages that no
training or selection saw), at every dim. The targets:

1. the pipeline at the smallest dim >= the base model at full dim (MAP@100);
2. the pipeline > the seed recipe at the same budget, at every dim;
3. the pipeline >= the base model, at every dim;
4. on the guard set, the pipeline within 0.01 MAP@100 of the base at every dim.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, add_common_args, markdown_table, results_dir, write_results

from trainers import cli
from trainers.config import SEED_RECIPE


def read_sweep(sweep: Path) -> dict:
    """The exported model's record (best/metrics.json) of a finished sweep."""
    path = sweep / "best" / "metrics.json"
    if not path.is_file():
        raise SystemExit(f"error: {path} does not exist: run a sweep first (make run), or --sweep")
    record = json.loads(path.read_text())
    if "test" not in record or "refit" not in record["test"]:  # a sweep without refit: no rival
        raise SystemExit(f"error: {path} has no test-split verdict with a refit: rerun the sweep")
    return record


def smoke_sweep(folder: Path) -> Path:
    """A smoke sweep (tiny model, refit, guard set) of the benchmark's own."""
    subprocess.run(
        [
            sys.executable,
            "sweeps/run.py",
            "--smoke-test",
            "--name",
            "quality",
            "--no-wandb",
            "--storage_path",
            str(folder),
        ],
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return folder / "quality"


def seed_at_budget(record: dict, work: Path):
    """The seed recipe trained like the refit (its pairs, epochs, data and split), scored on
    the test split: (config, test metrics, training seconds, the training's result)."""
    from trainers.config import TrainConfig, parse
    from trainers.evaluate import evaluate, test_task
    from trainers.models import load_model
    from trainers.train import train

    refit = parse(TrainConfig, record.get("refit_config") or record["config"])
    config = refit.replace(
        learning_rate=SEED_RECIPE.learning_rate,
        batch_size=SEED_RECIPE.batch_size,
        matryoshka_weights=SEED_RECIPE.matryoshka_weights,
        output_dir=str(work / "seed-at-budget"),
    )
    print(
        f"--- training the seed recipe on the refit's budget: {config.max_pairs} pairs, "
        f"{config.epochs} epochs",
        flush=True,
    )
    started = time.perf_counter()
    result = train(config, baseline={}, progress=False)
    seconds = time.perf_counter() - started
    model = load_model(config.output_dir)
    return config.to_dict(), evaluate(model, test_task(config), config), seconds, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sweep",
        help="a finished sweep's folder (default: runs/local; with --smoke, a smoke sweep of "
        "its own)",
    )
    add_common_args(parser)
    args = parser.parse_args(argv)
    tmp = tempfile.TemporaryDirectory()
    if args.sweep:
        sweep = Path(args.sweep)
    else:
        sweep = smoke_sweep(Path(tmp.name)) if args.smoke else REPO / "runs" / "local"
    record = read_sweep(sweep)
    config, seed_test, seed_seconds, seed_result = seed_at_budget(record, Path(tmp.name))
    body = report(args, sweep, record, config, seed_test, seed_seconds, seed_result)
    write_results(
        results_dir(args, tmp.name),
        "quality",
        "Quality: the pipeline vs the seed recipe",
        body,
        data=record.get("data"),
    )
    return 0


def report(args, sweep, record, config, seed_test, seed_seconds, seed_result) -> str:
    dims = [int(d) for d in record["config"]["matryoshka_dims"]]
    full, small = dims[0], dims[-1]
    test = record["test"]
    pipeline = record["final"]
    exported = record["exported"]
    models = {
        "base": test["base"],
        "seed recipe (trial budget)": test.get("seed recipe", {}),
        "best trial": test["best trial"],
        "refit": test["refit"],
        f"pipeline ({exported})": pipeline,
        "seed recipe at the refit's budget": seed_test,
    }

    def value(metrics: dict, dim: int, name: str = "map@100") -> float:
        return metrics.get(f"dim_{dim}_cosine_{name}", float("nan"))

    def table(name: str) -> str:
        rows = [[d] + [f"{value(m, d, name):.4f}" for m in models.values()] for d in dims]
        return markdown_table(["dim", *models], rows, "r" * (len(models) + 1))

    base = test["base"]
    targets = [
        (
            f"pipeline at dim {small} >= base at full dim {full}",
            value(pipeline, small) >= value(base, full),
            f"{value(pipeline, small):.4f} vs {value(base, full):.4f} "
            f"({value(pipeline, small) / value(base, full):.3f}x)",
        ),
        (
            "pipeline > seed recipe at the same budget, every dim",
            all(value(pipeline, d) > value(seed_test, d) for d in dims),
            ", ".join(f"{d}: {value(pipeline, d) - value(seed_test, d):+.4f}" for d in dims),
        ),
        (
            "pipeline >= base, every dim",
            all(value(pipeline, d) >= value(base, d) for d in dims),
            ", ".join(f"{d}: {value(pipeline, d) - value(base, d):+.4f}" for d in dims),
        ),
    ]
    guard = record.get("guard", {})
    if guard:
        tolerance = 0.01
        drops = {d: value(guard["base"], d) - value(guard[exported], d) for d in dims}
        targets.append(
            (
                f"guard set: pipeline within {tolerance} MAP@100 of base, every dim "
                f"(mixing factor {record['mix_factor']:g})",
                all(drop <= tolerance for drop in drops.values()),
                ", ".join(f"{d}: {-drop:+.4f}" for d, drop in drops.items()),
            )
        )
    target_rows = [
        [name, "**met**" if ok else "**not met**", detail] for name, ok, detail in targets
    ]
    name = "bundled:tiny (smoke)" if args.smoke else record["config"]["model"]
    guard_lines = ""
    if guard:
        guard_models = {k: v for k, v in guard.items()}
        rows = [[d] + [f"{value(m, d):.4f}" for m in guard_models.values()] for d in dims]
        guard_lines = "\nGuard set (MAP@100):\n\n" + markdown_table(
            ["dim", *guard_models], rows, "r" * (len(guard_models) + 1)
        )
    return (
        f"Sweep `{sweep}` (model `{name}`). The pipeline's model: **{exported}**; refit on "
        f"{config['max_pairs']} pairs for {config['epochs']} epochs. The seed recipe (lr "
        f"{SEED_RECIPE.learning_rate:g}, batch "
        f"{SEED_RECIPE.batch_size}, all weights 1) trained on the same {seed_result.train_pairs} "
        f"pairs for {config['epochs']} epochs in {seed_seconds / 60:.1f} min. Every model scored "
        "on the sweep's test split (its own packages, never trained on or selected with).\n\n"
        + markdown_table(["target", "result", "figures"], target_rows, "lll")
        + "\nMAP@100 on the test split:\n\n"
        + table("map@100")
        + "\nNDCG@10 on the test split:\n\n"
        + table("ndcg@10")
        + guard_lines
    )


if __name__ == "__main__":
    sys.exit(cli.run(main))  # Ctrl-C and SIGTERM stop it, also under nohup
