"""Quality: the whole pipeline (sweep, refit, guard mixing) against the base model and the
seed recipe as its authors ran it, on the sweep's held-out test split, with error bars.

    python benchmarks/quality.py                     # --sweep runs/local: run `make run` first
    python benchmarks/quality.py --sweep runs/try2   # another finished sweep
    python benchmarks/quality.py --smoke             # a smoke sweep of its own, then the same

The pipeline's model is the sweep's export (runs/<sweep>/best): the best trial's configuration
refit on a larger budget (kept if it beat the best trial on validation), mixed with the
base model in weight space if the guard set asked for it. Its rival is what a user would get
without the sweep: the published models' seed recipe **as its authors ran it** (lr 2e-5,
batch 32, 4 epochs, all Matryoshka weights 1) on the same pairs as the refit; where the refit
trained another number of epochs, the recipe at the refit's epochs is a second row. Every
model is scored by trainers' evaluator on the sweep's test split (packages that no training
or selection saw), at every dim, and each difference comes with a 95% interval from a paired
bootstrap over the test queries (2,000 seeded resamples). A target counts as met only if the
difference reaches its bar and the interval's lower end is above 0:

1. the pipeline at the smallest dim - the base model at full dim >= +0.02 MAP@100;
2. the pipeline - the seed recipe (authors' epochs) >= +0.02 MAP@100, at every dim;
3. the pipeline - the base model > 0, at every dim;
4. on every *verifying* guard source (which chose nothing), the pipeline within 0.01 MAP@100
   of the base at every dim (the sweep's own guard figures: no interval).
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

BAR = 0.02  # MAP@100 the pipeline must gain (targets 1 and 2)
GUARD_TOLERANCE = 0.01
RESAMPLES = 2000
NEGATIVES_ON = "refit recipe, mined negatives"
NEGATIVES_OFF = "refit recipe, in-batch only"


def read_sweep(sweep: Path) -> dict:
    """The exported model's record (best/metrics.json) of a finished sweep."""
    path = sweep / "best" / "metrics.json"
    if not path.is_file():
        raise SystemExit(f"error: {path} does not exist: run a sweep first (make run), or --sweep")
    record = json.loads(path.read_text())
    if "test" not in record or not record.get("refit_config"):  # without a refit: no rival
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


def epochs_text(n: int) -> str:
    return f"{n} epoch" + ("s" if n != 1 else "")


def train_seed_recipe(refit, epochs: int, work: Path):
    """The seed recipe on the refit's pairs (its data, split, cap and seed) for ``epochs``, with
    in-batch negatives only, as its authors trained: (its model folder, training seconds)."""
    config = refit.replace(
        learning_rate=SEED_RECIPE.learning_rate,
        batch_size=SEED_RECIPE.batch_size,
        matryoshka_weights=SEED_RECIPE.matryoshka_weights,
        epochs=epochs,
        hard_negatives=None,
        load_best_model_at_end=False,  # the recipe trains its epochs, picks nothing
        output_dir=str(work / f"seed-{epochs}-epochs"),
    )
    return train_recipe(config, f"the seed recipe for {epochs} epochs")


def train_recipe(config, what: str):
    """Train ``config`` (on the refit's pairs): (its model folder, training seconds)."""
    from trainers.train import train

    print(f"--- training {what} on the refit's {config.max_pairs} pairs", flush=True)
    started = time.perf_counter()
    train(config, baseline={}, progress=False)
    return config.output_dir, time.perf_counter() - started


def measure(sweep: Path, record: dict, work: Path) -> dict:
    """Every model's per-query AP@100 on the sweep's test split, and what made them."""
    from trainers.config import TrainConfig, parse
    from trainers.data import compare, load_split
    from trainers.models import load_model
    from trainers.tasks import evaluator, test_task

    refit = parse(TrainConfig, record.get("refit_config") or record["config"])
    split = load_split(refit)
    splits = compare(record.get("data"), split.fingerprint)
    if not splits.startswith("the splits match"):
        raise SystemExit(f"error: this machine's data is not the sweep's: {splits}")
    scorer = evaluator(test_task(refit, split), refit)
    epochs = [SEED_RECIPE.epochs] + ([refit.epochs] if refit.epochs != SEED_RECIPE.epochs else [])
    folders = {"base": refit.model, f"pipeline ({record['exported']})": str(sweep / "best")}
    seconds = {}
    for n in epochs:
        label = f"seed recipe, {epochs_text(n)}"
        label += " (authors')" if n == SEED_RECIPE.epochs else " (the refit's)"
        folders[label], seconds[label] = train_seed_recipe(refit, n, work)
    if refit.hard_negatives is not None:
        # What the mined negatives did at the same budget: the refit's own recipe (no mixing)
        # trained here twice, with its negatives and with in-batch negatives only.
        for label, negatives in (
            (NEGATIVES_ON, refit.hard_negatives),
            (NEGATIVES_OFF, None),
        ):
            config = refit.replace(
                hard_negatives=negatives,
                load_best_model_at_end=False,
                output_dir=str(work / label.replace(" ", "-").replace(",", "")),
            )
            folders[label], seconds[label] = train_recipe(config, label)
    per_query = {}
    for label, folder in folders.items():
        print(f"--- scoring {label} on the test split ({len(scorer.queries)} queries)", flush=True)
        per_query[label] = scorer.average_precision(load_model(folder, refit.max_seq_length))
    return {
        "refit": refit,
        "splits": splits,
        "queries": len(scorer.queries),
        "corpus": len(scorer.corpus),
        "per_query": per_query,
        "seconds": seconds,
    }


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
    measured = measure(sweep, record, Path(tmp.name))
    write_results(
        results_dir(args, tmp.name),
        "quality",
        "Quality: the pipeline vs the base model and the seed recipe",
        report(args, sweep, record, measured),
        data=record.get("data"),
    )
    return 0


def interval(values: tuple[float, float, float]) -> str:
    diff, low, high = values
    return f"{diff:+.4f} [{low:+.4f}, {high:+.4f}]"


def report(args, sweep: Path, record: dict, measured: dict) -> str:
    from trainers.tasks import paired_bootstrap

    refit, per_query = measured["refit"], measured["per_query"]
    dims = list(refit.matryoshka_dims)
    full, small = dims[0], dims[-1]
    labels = list(per_query)
    base, pipeline, authors = labels[0], labels[1], labels[2]

    def versus(a: str, da: int, b: str, db: int) -> tuple[float, float, float]:
        return paired_bootstrap(per_query[a][da], per_query[b][db], RESAMPLES, seed=refit.seed)

    small_vs_full = versus(pipeline, small, base, full)
    vs_authors = {d: versus(pipeline, d, authors, d) for d in dims}
    vs_base = {d: versus(pipeline, d, base, d) for d in dims}
    targets = [
        (
            f"pipeline at dim {small} - base at full dim {full} >= +{BAR}, lower end > 0",
            small_vs_full[0] >= BAR and small_vs_full[1] > 0,
            interval(small_vs_full),
        ),
        (
            f"pipeline - seed recipe as its authors ran it >= +{BAR} at every dim, lower ends > 0",
            all(v[0] >= BAR and v[1] > 0 for v in vs_authors.values()),
            ", ".join(f"{d}: {interval(v)}" for d, v in vs_authors.items()),
        ),
        (
            "pipeline - base > 0 at every dim, lower ends > 0",
            all(v[1] > 0 for v in vs_base.values()),
            ", ".join(f"{d}: {interval(v)}" for d, v in vs_base.items()),
        ),
    ]
    guard, roles = record.get("guard", {}), record.get("guard_roles", {})
    exported = record["exported"]
    verifying = [name for name, role in roles.items() if role == "verify"]
    if verifying:
        drops = {
            (name, d): guard[name]["base"][f"dim_{d}_cosine_map@100"]
            - guard[name][exported][f"dim_{d}_cosine_map@100"]
            for name in verifying
            for d in dims
        }
        targets.append(
            (
                f"verifying guard sources ({', '.join(verifying)}): pipeline within "
                f"{GUARD_TOLERANCE} MAP@100 of base at every dim (mixing factor "
                f"{record['mix_factor']:g}, chosen on the choosing sources; the sweep's "
                "figures, no interval)",
                all(drop <= GUARD_TOLERANCE for drop in drops.values()),
                ", ".join(f"{name} {d}: {-drop:+.4f}" for (name, d), drop in drops.items()),
            )
        )
    target_rows = [
        [name, "**met**" if ok else "**not met**", detail] for name, ok, detail in targets
    ]
    means = [[d] + [f"{per_query[label][d].mean():.4f}" for label in labels] for d in dims]
    seeds = [label for label in labels[2:] if label.startswith("seed recipe")]
    rivals = [[label, *(interval(versus(pipeline, d, label, d)) for d in dims)] for label in seeds]
    negatives_lines = ""
    if NEGATIVES_ON in per_query:
        effect = [
            [f"{NEGATIVES_ON} - {NEGATIVES_OFF}"]
            + [interval(versus(NEGATIVES_ON, d, NEGATIVES_OFF, d)) for d in dims]
        ]
        negatives_lines = (
            f"\nHard negatives at the same budget (the refit's recipe, {refit.epochs} epochs, "
            f"unmixed, trained here with and without them; "
            + ", ".join(f"{k} {v}" for k, v in refit.hard_negatives.to_dict().items())
            + "), MAP@100 [95% interval]:\n\n"
            + markdown_table(
                ["difference", *(f"dim {d}" for d in dims)], effect, "l" + "r" * len(dims)
            )
        )
    # The sweep scored the export on the same split: the recomputation must agree.
    recorded = record["final"]
    agreement = max(
        abs(per_query[pipeline][d].mean() - recorded[f"dim_{d}_cosine_map@100"]) for d in dims
    )
    name = "bundled:tiny (smoke)" if args.smoke else refit.model
    trained = "; ".join(f"{label} {s / 60:.1f} min" for label, s in measured["seconds"].items())
    sweep_rows = [
        [d] + [f"{m[f'dim_{d}_cosine_map@100']:.4f}" for m in record["test"].values()] for d in dims
    ]
    guard_lines = (
        "\nThe sweep's own test-split MAP@100 (its report.md; trials on their budget):\n\n"
    )
    guard_lines += markdown_table(
        ["dim", *record["test"]], sweep_rows, "r" * (len(record["test"]) + 1)
    )
    for source, scores in guard.items():  # (not `name`: the model's name, used below)
        rows = [
            [d] + [f"{m[f'dim_{d}_cosine_map@100']:.4f}" for m in scores.values()] for d in dims
        ]
        role = "chooses" if roles.get(source) == "choose" else "verifies"
        guard_lines += f"\nGuard source {source} ({role}; MAP@100, the sweep's figures):\n\n"
        guard_lines += markdown_table(["dim", *scores], rows, "r" * (len(scores) + 1))
    precision_lines = ""
    if record.get("precisions"):
        from trainers.precision import cpu_backend, describe_recommended, precision_table

        precisions = record["precisions"]
        backend = cpu_backend(precisions)
        precision_lines = (
            f"\nThe export's output precisions (the sweep's figures: MAP@100 on validation, "
            f"{precisions['task']}, through {backend}, what `--backend auto` serves on a CPU; "
            f"(no): refused at that dim, over {precisions['tolerance']} below torch float32 "
            "there):\n\n"
            + "\n".join(precision_table(precisions, backend))
            + "\n\nRecommended: "
            + describe_recommended(precisions["backends"][backend]["recommended"])
            + ".\n"
        )
    return (
        f"Sweep `{sweep}` (model `{name}`). The pipeline's model: **{exported}**; refit on "
        f"{refit.max_pairs} pairs for {epochs_text(refit.epochs)}. The seed recipe (lr "
        f"{SEED_RECIPE.learning_rate:g}, batch {SEED_RECIPE.batch_size}, all weights 1) trained "
        f"on the same pairs ({trained}). Every model scored on the sweep's test split, "
        f"{measured['queries']} queries against {measured['corpus']} passages (its own "
        f"packages, never trained on or selected with; {measured['splits']}). Differences in "
        f"MAP@100 with their 95% interval: a paired bootstrap over the test queries, "
        f"{RESAMPLES} seeded resamples. The export's MAP@100 as recomputed here differs from "
        f"the sweep's own by at most {agreement:.1e}.\n\n"
        + markdown_table(["target", "result", "figures"], target_rows, "lll")
        + "\nMAP@100 on the test split:\n\n"
        + markdown_table(["dim", *labels], means, "r" * (len(labels) + 1))
        + "\nThe pipeline minus each seed-recipe row, MAP@100 [95% interval]:\n\n"
        + markdown_table(["rival", *(f"dim {d}" for d in dims)], rivals, "l" + "r" * len(dims))
        + negatives_lines
        + guard_lines
        + precision_lines
    )


if __name__ == "__main__":
    sys.exit(cli.run(main))  # Ctrl-C and SIGTERM stop it, also under nohup
