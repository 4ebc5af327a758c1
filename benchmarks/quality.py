"""Quality: the base model vs the seed recipe vs the sweep's best, at every Matryoshka dim.

    python benchmarks/quality.py                     # --sweep runs/local (run a sweep first)
    python benchmarks/quality.py --sweep runs/try2   # another finished sweep
    python benchmarks/quality.py --smoke --sweep DIR # tiny random model, seconds (CI runs this)

A sweep picks its best trial on its own held-out split, which is small (the default sweep:
1,000 passages) and a prefix of a seeded order of packages, so a larger held-out set would
contain packages the sweep trained on. This benchmark therefore never evaluates
runs/<sweep>/best itself. It reads the best trial's hyper-parameters from
runs/<sweep>/best/metrics.json, holds out its own split of the Debian pairs (>= 1,000 queries
against >= 10,000 passages; no package on both sides, checked), and trains on the rest, with
the sweep's training budget (its max_pairs, seed and epochs):

- base: the model the sweep started from, untrained;
- seed recipe: lr 2e-5, batch 32, 4 epochs, every Matryoshka weight 1 (the published models');
- sweep's best: the best trial's learning rate, batch size, epochs and weights.

Each is scored by trainers' evaluator at every dim (MAP@100, NDCG@10), with the Matryoshka
retention (MAP@100 at the smallest dim over MAP@100 at full dim), and the target is checked:
the sweep's best at the smallest dim matches or beats the base model at full dim.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from _common import REPO, add_common_args, markdown_table, results_dir, write_results

from trainers.config import SEED_RECIPE, Recipe

TUNED_KEYS = tuple(Recipe.model_fields)  # learning_rate, batch_size, epochs, matryoshka_weights


def best_config(sweep: Path):
    """The sweep's best trial's training config (from best/metrics.json)."""
    from trainers.config import TrainConfig, parse

    path = sweep / "best" / "metrics.json"
    if not path.is_file():
        raise SystemExit(
            f"error: {path} does not exist: run a sweep first (python sweeps/run.py), or pass "
            "--sweep"
        )
    return parse(TrainConfig, json.loads(path.read_text())["config"])


def held_out_split(config, min_passages: int):
    """The smallest seeded group split whose held-out side has >= ``min_passages`` passages."""
    from trainers.data import load_pairs, split_pairs

    pairs, _ = load_pairs(config)
    size = min_passages
    while True:
        train, test = split_pairs(pairs, size, config.seed)
        passages = len({p.passage for p in test})
        if passages >= min_passages or not train:
            return train, test
        size += min_passages - passages


def job(
    label: str,
    base,
    recipe: dict | None,
    train_file: Path,
    out: Path,
    max_pairs: int,
    task: tuple,
    threads: int,
) -> dict:
    """Fine-tune ``base`` with ``recipe`` on the benchmark's train split (None: keep the base
    model), then evaluate it on the held-out task. Runs in a worker process with ``threads``
    torch threads."""
    import torch
    from sentence_transformers import SentenceTransformer

    from trainers.evaluator import MatryoshkaInformationRetrievalEvaluator
    from trainers.models import load_model
    from trainers.train import train

    torch.set_num_threads(threads)
    train_s = 0.0
    if recipe is None:
        model = load_model(base.model, base.max_seq_length)
    else:
        config = base.replace(
            **recipe,
            data=str(train_file),
            group_column="group",
            max_pairs=max_pairs,
            # The trainer's own held-out set is a sliver of the train side (the benchmark's test
            # split stays unseen); no best-epoch pick: the last epoch is the model.
            eval_size=32,
            eval_max_queries=32,
            load_best_model_at_end=False,
            output_dir=str(out),
        )
        print(
            f"--- training {label}: {[f'{k}={getattr(config, k)}' for k in TUNED_KEYS]}", flush=True
        )
        result = train(config, baseline={})  # baseline={}: no baseline evaluation of the sliver
        train_s = result.seconds
        model = SentenceTransformer(str(out), device="cpu")
    print(f"--- evaluating {label}", flush=True)
    queries, corpus, relevant = task
    evaluator = MatryoshkaInformationRetrievalEvaluator(
        queries,
        corpus,
        relevant,
        matryoshka_dims=base.matryoshka_dims,
        batch_size=base.eval_batch_size,
    )
    started = time.perf_counter()
    metrics = evaluator(model)
    return {"metrics": metrics, "train_s": train_s, "eval_s": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sweep",
        default=str(REPO / "runs" / "local"),
        help="a finished sweep's folder (runs/<name>)",
    )
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries")
    parser.add_argument(
        "--corpus", type=int, default=10000, help="at least this many held-out passages"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="models trained/evaluated at once (1 = one at a time, all cores)",
    )
    add_common_args(parser)
    args = parser.parse_args(argv)

    from trainers.data import ir_task

    tmp = tempfile.TemporaryDirectory()
    sweep = Path(args.sweep)
    best = best_config(sweep)
    max_pairs = best.max_pairs
    if args.smoke:
        best = best.replace(model="bundled:tiny", max_seq_length=32)
        args.queries, args.corpus, max_pairs = 50, 200, 32
    if max_pairs is None:
        raise SystemExit(
            f"error: the sweep in {sweep} trained on every pair (max_pairs null): too big a budget "
            "here"
        )

    train, test = held_out_split(best, args.corpus)
    shared = {p.group for p in train} & {p.group for p in test}
    if shared:
        raise SystemExit(
            f"error: {len(shared)} packages on both sides of the split, e.g. {sorted(shared)[:3]}"
        )
    train_file = Path(tmp.name) / "train.jsonl"
    train_file.write_text(
        "".join(
            json.dumps({"anchor": p.query, "positive": p.passage, "group": p.group}) + "\n"
            for p in train
        )
    )
    queries, corpus, relevant = ir_task(test, args.queries, best.seed)
    print(
        f"held out: {len(test)} pairs of {len({p.group for p in test})} packages -> {len(queries)} "
        "queries, "
        f"{len(corpus)} passages; training side: {len(train)} pairs, {max_pairs} used per model",
        flush=True,
    )

    # The fine-tunes run side by side with one core each, as the sweep's trials do (and one
    # thread per process copes far better than two with a busy neighbour); base goes last.
    workers = max(1, min(args.workers, 3))
    threads = 1 if workers > 1 else (os.cpu_count() or 1)
    task = (queries, corpus, relevant)
    plans = {
        "seed recipe": SEED_RECIPE.model_dump(),
        "sweep's best": {k: getattr(best, k) for k in TUNED_KEYS},
        "base": None,
    }
    context = multiprocessing.get_context("spawn")  # fresh torch in each worker
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = {
            label: pool.submit(
                job,
                label,
                best,
                recipe,
                train_file,
                Path(tmp.name) / f"model-{i}",
                max_pairs,
                task,
                threads,
            )
            for i, (label, recipe) in enumerate(plans.items())
        }
        runs = {label: futures[label].result() for label in ("base", "seed recipe", "sweep's best")}

    body = report(
        args,
        sweep,
        best,
        runs,
        len(queries),
        len(corpus),
        len(test),
        len(train),
        max_pairs,
        workers,
        threads,
    )
    write_results(
        results_dir(args, tmp.name),
        "quality",
        "Quality: base vs seed recipe vs the sweep's best",
        body,
    )
    return 0


def report(
    args, sweep, best, runs, n_queries, n_corpus, n_test, n_train, max_pairs, workers, threads
) -> str:
    labels = list(runs)
    dims = list(best.matryoshka_dims)
    full, small = dims[0], dims[-1]

    def value(label: str, dim: int, name: str) -> float:
        return runs[label]["metrics"][f"dim_{dim}_cosine_{name}"]

    def per_dim(name: str) -> str:
        rows = [[dim] + [f"{value(label, dim, name):.4f}" for label in labels] for dim in dims]
        return markdown_table(
            ["dim"] + [f"{label} {name.upper()}" for label in labels], rows, "r" * (len(labels) + 1)
        )

    retention = {
        label: value(label, small, "map@100") / value(label, full, "map@100") for label in labels
    }
    target = value("base", full, "map@100")
    tuned = value("sweep's best", small, "map@100")
    seed_small = value("seed recipe", small, "map@100")
    tuned_full, seed_full = (
        value("sweep's best", full, "map@100"),
        value("seed recipe", full, "map@100"),
    )
    recipe = ", ".join(
        f"{k} {[round(w, 3) for w in best.weights] if k == 'matryoshka_weights' else getattr(best, k)}"  # noqa: E501
        for k in TUNED_KEYS
    )
    return (
        f"Model `{'bundled:tiny (smoke)' if args.smoke else best.model}`; sweep `{sweep}` "
        f"(best trial's recipe: {recipe}).\n"
        f"Held out: {n_queries} queries against {n_corpus} passages, from {n_test} pairs of whole "
        "packages (seeded "
        f"split; no package on both sides, checked). Each fine-tune: {max_pairs} pairs drawn (seed "
        f"{best.seed}) "
        f"from the other {n_train}, the sweep's budget, {best.max_seq_length} tokens, last epoch "
        "kept. "
        f"{workers} worker process(es) with {threads} torch thread(s) each.\n\n"
        "MAP@100:\n\n"
        + per_dim("map@100")
        + "\nNDCG@10:\n\n"
        + per_dim("ndcg@10")
        + f"\nMatryoshka retention (MAP@100 at dim {small} / MAP@100 at dim {full}):\n\n"
        + markdown_table(
            [
                "model",
                "retention",
                f"MAP@100 at {small}",
                f"MAP@100 at {full}",
                "training s",
                "evaluation s",
            ],
            [
                [
                    label,
                    f"{retention[label]:.3f}",
                    f"{value(label, small, 'map@100'):.4f}",
                    f"{value(label, full, 'map@100'):.4f}",
                    f"{runs[label]['train_s']:.0f}",
                    f"{runs[label]['eval_s']:.0f}",
                ]
                for label in labels
            ],
        )
        + f"\nTarget (the sweep's best at dim {small} matches or beats the base model at full dim "
        f"{full}): "
        f"{tuned:.4f} vs {target:.4f}, ratio {tuned / target:.3f}: "
        f"**{'met' if tuned >= target else 'not met'}**.\n"
        f"The seed recipe at dim {small}: {seed_small:.4f}, ratio {seed_small / target:.3f} to the "
        "base at full dim.\n"
        f"Sweep's best / seed recipe, MAP@100 at dim {full}: {tuned_full / seed_full:.3f}; at dim "
        f"{small}: "
        f"{tuned / seed_small:.3f}.\n"
    )


if __name__ == "__main__":
    sys.exit(main())
