"""The quality gate: may an ONNX backend of a model folder be served in place of torch fp32?

int8 is only worth serving where retrieval quality survives, which is measured per
Matryoshka dim, not assumed: ``gate`` scores every backend with trainers' evaluator and
records each one's MAP@100 and NDCG@10 at every dim, and whether it is within ``tolerance``
MAP@100 of torch fp32 at every dim, in the folder's matryoshka.json (``backends``); from the
same encodings, which output precisions (int8, binary...) may be served at which dim
(``precisions``: trainers/precision.py). A gate
needs ``MIN_GATE_QUERIES`` queries to decide: on fewer, one query's rank moves MAP@100 by more
than the tolerance, so a backend passes or fails by chance, and it is recorded as not gated.

    python -m trainers.export my-model --gate-data pairs.jsonl      # export, then gate
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from trainers import precision
from trainers.encoders import BACKENDS, OnnxEncoder, available
from trainers.models import matryoshka_info, write_matryoshka_info

DEFAULT_TOLERANCE = 0.005  # MAP@100 a backend may lose against torch fp32 at any dim
# Below this, one query is 1/n of MAP@100: at 63 queries (a smoke sweep's validation) a single
# query whose relevant passage falls from rank 1 to 2 moves it by 0.008, more than the
# tolerance, so the verdict would be luck. (The default sweep gates on 300 validation queries.)
MIN_GATE_QUERIES = 200


def gate(
    folder: str | Path,
    task,
    config,
    tolerance: float = DEFAULT_TOLERANCE,
    torch_metrics: dict[str, float] | None = None,
    precision_tolerance: float = precision.DEFAULT_TOLERANCE,
    recommend_within: float = precision.DEFAULT_RECOMMEND_WITHIN,
) -> dict[str, Any]:
    """Score every backend of ``folder`` on ``task`` at every dim (trainers' evaluator), and
    record in its matryoshka.json which are servable: within ``tolerance`` MAP@100 of torch
    fp32 at every dim (``backends``). From the same encodings, every precision of every backend
    at every dim, against ``precision_tolerance``, and the recommended dim (``precisions``:
    trainers/precision.py). ``torch_metrics``: torch's, if already measured on ``task``.
    Returns the ``backends`` record."""
    from trainers.models import load_model
    from trainers.tasks import evaluator

    folder = Path(folder)
    model = load_model(str(folder), device="cpu")
    scorer = evaluator(task, config)
    queries, corpus = scorer.encode_full(model)
    embeddings = {"torch": (_numpy(queries), _numpy(corpus))}
    results = {"torch": torch_metrics or scorer.score_embeddings(model, queries, corpus)}
    for backend in available(folder)[1:]:
        encoder = OnnxEncoder(folder, backend)
        prompt = encoder.prompts.get("query", "")
        queries = encoder.encode(
            [prompt + q for q in task.queries.values()], config.eval_batch_size
        )
        corpus = encoder.encode(list(task.corpus.values()), config.eval_batch_size)
        embeddings[backend] = (queries, corpus)
        results[backend] = scorer.score_embeddings(model, queries, corpus)
    decided = len(task.queries) >= MIN_GATE_QUERIES
    record: dict[str, Any] = {"task": task.describe(), "tolerance": tolerance, "metric": "map@100"}
    if not decided:
        record["undecided"] = f"{len(task.queries)} queries, under the {MIN_GATE_QUERIES} needed"
    for backend, metrics in results.items():
        drops = {
            d: results["torch"][f"dim_{d}_cosine_map@100"] - metrics[f"dim_{d}_cosine_map@100"]
            for d in config.matryoshka_dims
        }
        record[backend] = {
            "gated": backend == "torch"
            or (decided and all(drop <= tolerance for drop in drops.values())),
            "largest_drop": max(drops.values()),
            **{
                f"dim_{d}_{m}": metrics[f"dim_{d}_cosine_{m}"]
                for d in config.matryoshka_dims
                for m in ("map@100", "ndcg@10")
            },
        }
    precisions = precision.gate(
        embeddings,
        task,
        list(config.matryoshka_dims),
        precision.load_calibration(folder),
        {b: record[b]["gated"] for b in results},
        precision_tolerance,
        recommend_within,
        decided,
    )
    write_matryoshka_info(
        folder,
        matryoshka_info(folder).get("dims", config.matryoshka_dims),
        backends=record,
        precisions=precisions,
    )
    return record


def _numpy(x):
    return x.detach().cpu().float().numpy() if hasattr(x, "detach") else np.asarray(x)


def gate_table(record: dict[str, Any], dims: list[int]) -> list[str]:
    """The backend x dim table of a gate record, in Markdown (model card, report)."""
    backends = [b for b in BACKENDS if b in record]
    lines = [
        "| backend | "
        + " | ".join(f"MAP@100 @{d}" for d in dims)
        + " | "
        + " | ".join(f"NDCG@10 @{d}" for d in dims)
        + " | largest MAP@100 drop | servable |",
        "|---|" + "---:|" * (2 * len(dims) + 1) + "---|",
    ]
    for b in backends:
        r = record[b]
        cells = [f"{r[f'dim_{d}_map@100']:.4f}" for d in dims]
        cells += [f"{r[f'dim_{d}_ndcg@10']:.4f}" for d in dims]
        if r["gated"]:
            verdict = "yes"
        elif "undecided" in record:
            verdict = f"no (needs --allow-ungated: {record['undecided']})"
        else:
            verdict = f"no (needs --allow-ungated: over {record['tolerance']})"
        lines.append(f"| {b} | " + " | ".join(cells) + f" | {r['largest_drop']:+.4f} | {verdict} |")
    return lines
