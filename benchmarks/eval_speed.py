"""Evaluation speed: the encode-once Matryoshka evaluator vs sentence-transformers' recipe.

    python benchmarks/eval_speed.py            # bundled MiniLM, Debian held-out split (minutes)
    python benchmarks/eval_speed.py --smoke    # tiny random model, seconds (CI runs this)

The recipe of the published Matryoshka models is a SequentialEvaluator of one
InformationRetrievalEvaluator(truncate_dim=d) per dim, which encodes queries and corpus once
per dim. Ours encodes once and slices. Both run here on the same model and data; the table
gives wall time, the ratio, and the largest difference over every metric at every dim.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

from _common import add_common_args, results_dir, write_results

from trainers import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="bundled:minilm", help="model spec, as in trainers' config"
    )
    parser.add_argument("--dims", default="384,256,128,64", help="Matryoshka dims, largest first")
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries")
    parser.add_argument(
        "--corpus", type=int, default=5000, help="held-out pairs whose passages form the corpus"
    )
    parser.add_argument("--max-seq-length", type=int, default=128)
    add_common_args(parser)
    args = parser.parse_args(argv)

    from sentence_transformers.base.evaluation import SequentialEvaluator
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    from trainers.config import TrainConfig
    from trainers.data import ir_task, load_split
    from trainers.evaluator import MatryoshkaInformationRetrievalEvaluator
    from trainers.models import load_model

    dims = [int(d) for d in args.dims.split(",")]
    tmp = tempfile.TemporaryDirectory()
    if args.smoke:
        args.model, args.queries, args.corpus = "bundled:tiny", 50, 200
    model = load_model(args.model, args.max_seq_length)
    split = load_split(TrainConfig(eval_size=args.corpus, max_pairs=8))
    queries, corpus, relevant = ir_task(split.validation, args.queries, seed=42)
    print(f"{len(queries)} queries, {len(corpus)} passages, dims {dims}")

    def ours():
        return MatryoshkaInformationRetrievalEvaluator(
            queries, corpus, relevant, matryoshka_dims=dims, batch_size=64, show_progress_bar=True
        )(model)

    def sequential():
        return SequentialEvaluator(
            [
                InformationRetrievalEvaluator(
                    queries,
                    corpus,
                    relevant,
                    truncate_dim=d,
                    name=f"dim_{d}",
                    batch_size=64,
                    show_progress_bar=True,
                    write_csv=False,
                )
                for d in dims
            ]
        )(model)

    timings, metrics = {}, {}
    for name, run in (("encode-once (ours)", ours), ("SequentialEvaluator", sequential)):
        started = time.perf_counter()
        metrics[name] = run()
        timings[name] = time.perf_counter() - started
    a, b = metrics["encode-once (ours)"], metrics["SequentialEvaluator"]
    shared = [k for k in b if k in a]
    max_diff = max(abs(a[k] - b[k]) for k in shared)
    ratio = timings["SequentialEvaluator"] / timings["encode-once (ours)"]
    body = (
        f"{len(queries)} queries against {len(corpus)} passages (Debian held-out split), "
        f"model `{'tiny random (smoke)' if args.smoke else args.model}`, dims {dims}.\n\n"
        "| evaluator | wall time (s) |\n|---|---:|\n"
        + "".join(f"| {name} | {seconds:.1f} |\n" for name, seconds in timings.items())
        + f"\n**speed-up: {ratio:.2f}x**; largest difference over {len(shared)} metrics: "
        f"{max_diff:.2e}\n"
    )
    write_results(
        results_dir(args, tmp.name),
        "eval_speed",
        "Evaluation speed: encode once vs per-dim re-encode",
        body,
        data=split.fingerprint,
    )
    return 0 if max_diff <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(cli.run(main))  # Ctrl-C and SIGTERM stop it, also under nohup
