"""Hard negatives: what mining adds to the same recipe at the same budget, on the test split.

    python benchmarks/hard_negatives.py          # the default sweep's data and model, ~30 min
    python benchmarks/hard_negatives.py --smoke  # 48 pairs, short texts: a minute (CI runs this)

One recipe (the seed recipe's lr 2e-5 and batch 32, all weights 1, ``--epochs`` epochs) on the
same ``--pairs`` training pairs of the default sweep's split, trained once per variant:

- in-batch negatives only (what the sweep does without ``hard_negatives:``);
- 1 mined negative per pair, relative margin 0.05 (NV-Retriever's default), pool ``--pool``;
- 3 mined negatives, the same margin and pool (more negatives);
- 1 mined negative with no margin (what the false-negative filter is worth).

Each is scored on the sweep's test split (1,000 queries against 10,000 passages of packages
that no training saw) at every dim; each mined variant minus in-batch-only comes with a 95%
interval from a paired bootstrap over the test queries (2,000 seeded resamples). The mining
record (pairs kept, candidates the margin filtered, seconds) and each variant's training time
are in the results file: the cost beside the gain.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _common import add_common_args, markdown_table, results_dir, write_results

from trainers import cli
from trainers.config import SEED_RECIPE, HardNegatives

RESAMPLES = 2000
VARIANTS = {
    "in-batch only": None,
    "1 negative, margin 0.05": {"num_negatives": 1, "relative_margin": 0.05},
    "3 negatives, margin 0.05": {"num_negatives": 3, "relative_margin": 0.05},
    "1 negative, no margin": {"num_negatives": 1, "relative_margin": None},
}


def base_config(args):
    import sweeps

    sweep = sweeps.default_config()
    fixed = {
        "max_pairs": args.pairs,
        "epochs": args.epochs,
        "learning_rate": SEED_RECIPE.learning_rate,
        "batch_size": SEED_RECIPE.batch_size,
        "matryoshka_weights": None,
        "load_best_model_at_end": False,
    }
    if args.smoke:  # the bundled MiniLM (an untrained model scores every passage alike)
        fixed.update(
            max_pairs=48,
            max_seq_length=32,
            eval_size=60,
            test_size=60,
            eval_batch_size=64,
        )
    return sweep.train.replace(**fixed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=1500, help="training pairs (the refit's)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of every variant")
    parser.add_argument("--pool", type=int, default=10000, help="passages mined among")
    add_common_args(parser)
    args = parser.parse_args(argv)
    tmp = tempfile.TemporaryDirectory()
    from trainers.data import load_split
    from trainers.models import load_model
    from trainers.negatives import describe
    from trainers.tasks import evaluator, paired_bootstrap, test_task
    from trainers.train import train

    config = base_config(args)
    pool = 2000 if args.smoke else args.pool
    split = load_split(config)
    scorer = evaluator(test_task(config, split), config)
    dims = list(config.matryoshka_dims)
    per_query, seconds, mined = {}, {}, {}
    folders = {"base": config.model}
    for label, settings in VARIANTS.items():
        negatives = None if settings is None else HardNegatives(**settings, pool=pool)
        variant = config.replace(
            hard_negatives=negatives,
            output_dir=str(Path(tmp.name) / label.replace(" ", "-").replace(",", "")),
        )
        print(f"--- training: {label} ({variant.max_pairs} pairs, {variant.epochs} epochs)")
        started = time.perf_counter()
        result = train(variant, baseline={}, progress=False)
        seconds[label] = time.perf_counter() - started
        if result.negatives is not None:
            mined[label] = result.negatives
        folders[label] = variant.output_dir
    for label, folder in folders.items():
        print(f"--- scoring {label} on the test split ({len(scorer.queries)} queries)", flush=True)
        per_query[label] = scorer.average_precision(load_model(folder, config.max_seq_length))
    means = [[d] + [f"{per_query[label][d].mean():.4f}" for label in per_query] for d in dims]
    off = "in-batch only"
    effects = []
    for label in list(VARIANTS)[1:]:
        cells = []
        for d in dims:
            diff, low, high = paired_bootstrap(
                per_query[label][d], per_query[off][d], RESAMPLES, seed=config.seed
            )
            cells.append(f"{diff:+.4f} [{low:+.4f}, {high:+.4f}]")
        effects.append([f"{label} - {off}", *cells])
    cost = [
        [label, f"{seconds[label] / 60:.1f}", describe(mined[label]) if label in mined else "-"]
        for label in VARIANTS
    ]
    name = f"{config.model} (smoke)" if args.smoke else config.model
    body = (
        f"Model `{name}`; the seed recipe (lr {SEED_RECIPE.learning_rate:g}, batch "
        f"{SEED_RECIPE.batch_size}, all weights 1) for {config.epochs} epochs on "
        f"{len(split.train)} training pairs; mining pool {pool} train-split passages (plus the "
        f"pairs' own), base model, top 50 candidates. Test split: {len(scorer.queries)} queries "
        f"against {len(scorer.corpus)} passages. Differences: paired bootstrap over the test "
        f"queries, {RESAMPLES} seeded resamples, 95% interval.\n\n"
        "MAP@100 on the test split:\n\n"
        + markdown_table(["dim", *per_query], means, "r" * (len(per_query) + 1))
        + "\nEach mined variant minus in-batch only, MAP@100 [95% interval]:\n\n"
        + markdown_table(
            ["difference", *(f"dim {d}" for d in dims)], effects, "l" + "r" * len(dims)
        )
        + "\nCost: training minutes (mining included where it mined) and what was mined:\n\n"
        + markdown_table(["variant", "minutes", "mining"], cost, "lrl")
    )
    write_results(
        results_dir(args, tmp.name),
        "hard_negatives",
        "Hard negatives: the same recipe and budget, with and without mined negatives",
        body,
        data=split.fingerprint,
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))  # Ctrl-C and SIGTERM stop it, also under nohup
