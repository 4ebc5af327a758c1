"""Smaller vectors: int8, uint8, binary and ubinary embeddings, gated per Matryoshka dim, and
the recommended (dim, precision).

A float32 vector of d dims takes 4d bytes; int8 and uint8 take d (sentence-transformers'
scalar quantisation: each dim's range, from calibration embeddings, cut into 256 buckets);
binary and ubinary take d/8 (one bit per dim, its sign). What a precision costs in retrieval
depends on the model and the dim, so it is measured, not assumed: ``gate`` scores every
precision at every dim on the validation split, searched as sentence-transformers' quantized
search searches them, and records which may be served where:

- float32: cosine of the normalised vectors;
- int8: inner product of the int8 codes (usearch's int8 index: ``semantic_search_usearch``);
  uint8 are the same codes plus 128, for stores that keep unsigned bytes: searched with the
  offset taken off they rank as int8, so they share int8's gate (their raw inner product
  ranked badly: MAP@100 0.10 against int8's 0.77 at 64 dims on MiniLM);
- binary and ubinary: Hamming distance of the bits (the same bits, packed as int8 or uint8);
- binary, rescored: the Hamming top ``RESCORE_MULTIPLIER`` x 100, re-ranked by the float query
  against the documents' bits (sentence-transformers' rescoring). It needs the float query at
  search time, so it is reported, not served as a precision of its own.

Queries are quantized like documents: a server answers a query with the precision asked for.
A precision is allowed at a dim when its MAP@100 is within ``tolerance`` of torch float32 at
that dim (the reference of every backend: what the model can do). The recommended dim is the
allowed (dim, precision) with the fewest bytes per vector whose MAP@100 is within
``recommend_within`` of torch float32 at full dim.

Calibration: ``calibrate`` saves the exported model's embeddings of up to 1,000 training
passages (full dim, normalised) as ``quantization/calibration.npy`` in the model folder. At
dim d the int8 ranges are those of the calibration embeddings truncated to d and normalised
again, as a served vector is (``at_dim``), so ``quantize`` is exactly
``quantize_embeddings(vectors, precision, calibration_embeddings=at_dim(calibration, d))``.

    python -m trainers.export my-model --gate-data pairs.jsonl   # calibrates and gates
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")  # what a server may send
SCORED = ("float32", "int8", "binary", "binary-rescored")  # rows of the quality table
QUANTIZED = ("int8", "uint8", "binary", "ubinary")
CALIBRATION_FILE = "quantization/calibration.npy"
DEFAULT_TOLERANCE = 0.01  # MAP@100 a precision may lose against torch float32 at its dim
DEFAULT_RECOMMEND_WITHIN = 0.01  # MAP@100 the recommended dim may lose against full float32
RESCORE_MULTIPLIER = 4  # candidates re-ranked per result wanted (sentence-transformers' docs)
TOP_K = 100  # MAP@100


def bytes_per_vector(precision: str, dim: int) -> int:
    if precision in ("binary", "ubinary", "binary-rescored"):
        return (dim + 7) // 8
    return dim if precision in ("int8", "uint8") else 4 * dim


def at_dim(vectors: np.ndarray, dim: int | None) -> np.ndarray:
    """Matryoshka truncation to ``dim`` (None: all), then unit length: what a server sends."""
    if dim is not None:
        vectors = vectors[:, :dim]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def calibrate(folder: str | Path, model, passages: list[str], limit: int = 1000) -> Path:
    """Encode up to ``limit`` of ``passages`` (training passages: never the ones the gate
    scores) with ``model`` and save them in ``folder`` as the int8 calibration."""
    from trainers.errors import DataError

    passages = list(dict.fromkeys(passages))[:limit]
    if len(passages) < 2:
        raise DataError(f"int8 calibration needs at least 2 passages, got {len(passages)}")
    vectors = model.encode(passages, normalize_embeddings=True, convert_to_numpy=True)
    path = Path(folder) / CALIBRATION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors.astype(np.float32))
    return path


def calibrate_apart(folder: str | Path, pairs, task, limit: int = 1000) -> Path:
    """``calibrate`` the model in ``folder`` on the passages of ``pairs`` that ``task`` does
    not score: calibrated on the very vectors the gate scores, int8 would look better than it
    is."""
    from trainers.models import load_model

    scored = set(task.corpus.values())
    passages = [p.passage for p in pairs if p.passage not in scored]
    return calibrate(folder, load_model(str(folder), device="cpu"), passages, limit)


def load_calibration(folder: str | Path) -> np.ndarray | None:
    path = Path(folder) / CALIBRATION_FILE
    return np.load(path) if path.is_file() else None


class Quantizer:
    """Quantizes served vectors with a model folder's calibration; the ranges of each dim are
    computed once. ``calibration`` None: binary and ubinary only."""

    def __init__(self, calibration: np.ndarray | None) -> None:
        # Imported here, when a replica loads its model: the first quantized request imported
        # sentence-transformers on the replica's event loop, a stall of seconds that cost that
        # load level a quarter of its requests/s (benchmarks/results/serving-precisions.md).
        from sentence_transformers.util.quantization import quantize_embeddings

        self._quantize_embeddings = quantize_embeddings
        self.calibration = calibration
        self._ranges: dict[int, np.ndarray] = {}

    def ranges(self, dim: int) -> np.ndarray:
        if self.calibration is None:
            raise ValueError("no int8 calibration in this model folder")
        if dim not in self._ranges:
            calibration = at_dim(self.calibration, dim)
            self._ranges[dim] = np.vstack((calibration.min(axis=0), calibration.max(axis=0)))
        return self._ranges[dim]

    def __call__(self, vectors: np.ndarray, precision: str) -> np.ndarray:
        """``vectors`` (already at their dim, normalised) in ``precision``."""
        ranges = self.ranges(vectors.shape[1]) if precision in ("int8", "uint8") else None
        return self._quantize_embeddings(vectors, precision, ranges=ranges)


def _ranked(scores: np.ndarray, id_order: np.ndarray, k: int) -> np.ndarray:
    """The top ``k`` corpus indices of each row, ties broken by corpus id (as
    sentence-transformers' evaluator and trainers' average_precision break them)."""
    k = min(k, scores.shape[1])
    return np.stack([np.lexsort((id_order, -row))[:k] for row in scores])


def rank_metrics(hits: np.ndarray, relevant: list[set[int]]) -> dict[str, float]:
    """MAP@100 and NDCG@10 (binary relevance) of ranked corpus indices, one row per query."""
    ap, ndcg = np.zeros(len(relevant)), np.zeros(len(relevant))
    for row, wanted in enumerate(relevant):
        found, total = 0, 0.0
        for rank, hit in enumerate(hits[row][:TOP_K]):
            if hit in wanted:
                found += 1
                total += found / (rank + 1)
        ap[row] = total / min(TOP_K, len(wanted))
        dcg = sum(1 / np.log2(r + 2) for r, h in enumerate(hits[row][:10]) if h in wanted)
        ideal = sum(1 / np.log2(r + 2) for r in range(min(10, len(wanted))))
        ndcg[row] = dcg / ideal
    return {"map@100": float(ap.mean()), "ndcg@10": float(ndcg.mean())}


def score_precisions(
    queries: np.ndarray,
    corpus: np.ndarray,
    relevant: list[set[int]],
    id_order: np.ndarray,
    dims: list[int],
    calibration: np.ndarray | None,
) -> dict[int, dict[str, dict[str, float]]]:
    """MAP@100 and NDCG@10 of every scored precision at every dim: {dim: {precision: metrics}},
    from full-dim embeddings (one row per query, per corpus text)."""
    quantize = Quantizer(calibration)
    out: dict[int, dict[str, dict[str, float]]] = {}
    for dim in dims:
        q, c = at_dim(queries, dim), at_dim(corpus, dim)
        found: dict[str, dict[str, float]] = {}
        found["float32"] = rank_metrics(_ranked(q @ c.T, id_order, TOP_K), relevant)
        if calibration is not None:
            codes_q, codes_c = (quantize(x, "int8").astype(np.int64) for x in (q, c))
            scores = (codes_q @ codes_c.T).astype(np.float64)
            found["int8"] = rank_metrics(_ranked(scores, id_order, TOP_K), relevant)
        bits_q, bits_c = (q > 0).astype(np.float32), (c > 0).astype(np.float32)
        # Matching bits minus differing bits: d - 2 x Hamming, so the ranking is Hamming's.
        hamming = (2 * bits_q - 1) @ (2 * bits_c - 1).T
        ranked = _ranked(hamming, id_order, RESCORE_MULTIPLIER * TOP_K)
        found["binary"] = rank_metrics(ranked, relevant)
        # Rescoring, as sentence-transformers does it: the float query against the 0/1 bits of
        # each candidate, best first, ties by corpus id.
        rescored = np.einsum("ij,ikj->ik", q, bits_c[ranked])
        order = [np.lexsort((id_order[row], -s)) for row, s in zip(ranked, rescored, strict=True)]
        reranked = np.stack([row[o] for row, o in zip(ranked, order, strict=True)])
        found["binary-rescored"] = rank_metrics(reranked, relevant)
        for precision, metrics in found.items():
            metrics["bytes"] = bytes_per_vector(precision, dim)
        out[dim] = found
    return out


def gate(
    embeddings: dict[str, tuple[np.ndarray, np.ndarray]],
    task,
    dims: list[int],
    calibration: np.ndarray | None,
    backends_gated: dict[str, bool],
    tolerance: float = DEFAULT_TOLERANCE,
    recommend_within: float = DEFAULT_RECOMMEND_WITHIN,
    decided: bool = True,
) -> dict[str, Any]:
    """The precision record of a model folder (matryoshka.json's ``precisions``).

    ``embeddings``: backend -> (queries, corpus) at full dim, in ``task``'s order, torch first;
    ``backends_gated``: whether each backend may be served (its own gate). Per backend and dim,
    each precision's metrics, bytes, drop against torch float32 at that dim, and whether it is
    allowed; per backend, the recommended (dim, precision)."""
    corpus_ids = list(task.corpus)
    position = {cid: i for i, cid in enumerate(corpus_ids)}
    relevant = [{position[c] for c in task.relevant[q]} for q in task.queries]
    id_order = np.empty(len(corpus_ids), dtype=np.int64)
    id_order[np.argsort(np.array(corpus_ids, dtype=object), kind="stable")] = np.arange(
        len(corpus_ids)
    )
    scored = {
        backend: score_precisions(q, c, relevant, id_order, dims, calibration)
        for backend, (q, c) in embeddings.items()
    }
    reference = {d: scored["torch"][d]["float32"]["map@100"] for d in dims}
    full = reference[max(dims)]
    record: dict[str, Any] = {
        "task": task.describe(),
        "tolerance": tolerance,
        "recommend_within": recommend_within,
        "metric": "map@100",
        "reference": "torch float32 at the same dim",
        "calibration": CALIBRATION_FILE if calibration is not None else None,
        "calibration_passages": 0 if calibration is None else len(calibration),
        "rescore_multiplier": RESCORE_MULTIPLIER,
        "backends": {},
    }
    if not decided:
        record["undecided"] = f"{len(task.queries)} queries"
    for backend, by_dim in scored.items():
        table: dict[str, Any] = {}
        for d in dims:
            row = {}
            for precision, metrics in by_dim[d].items():
                drop = reference[d] - metrics["map@100"]
                allowed = precision == "float32" or (
                    decided and precision != "binary-rescored" and drop <= tolerance
                )
                row[precision] = {**metrics, "drop": drop, "allowed": allowed}
            # The same codes as int8 and binary, stored unsigned (see the module's docstring).
            for unsigned, signed in (("uint8", "int8"), ("ubinary", "binary")):
                if signed in row:
                    row[unsigned] = dict(row[signed])
            table[str(d)] = row
        record["backends"][backend] = {
            "dims": table,
            "servable": bool(backends_gated.get(backend, backend == "torch")),
            "recommended": recommend(table, full, recommend_within),
        }
    return record


def recommend(table: dict[str, Any], full: float, within: float) -> dict[str, Any]:
    """The allowed (dim, precision) with the fewest bytes per vector whose MAP@100 is within
    ``within`` of ``full`` (torch float32 at full dim); the most MAP@100 among equals."""
    candidates = [
        (metrics["bytes"], -metrics["map@100"], int(d), precision)
        for d, row in table.items()
        for precision, metrics in row.items()
        if precision in PRECISIONS
        and precision not in ("uint8", "ubinary")  # listed with int8 and binary
        and metrics["allowed"]
        and full - metrics["map@100"] <= within
    ]
    if not candidates:
        return {"dim": None, "why": f"no allowed (dim, precision) within {within} of full dim"}
    size, negative, dim, precision = min(candidates)
    return {
        "dim": dim,
        "precision": precision,
        "bytes": size,
        "map@100": -negative,
        "loss": full + negative,
        "within": within,
    }


CPU_PREFERENCE = ("onnx-int8", "onnx")  # fastest first (measured: README, Serving)


def cpu_backend(record: dict[str, Any]) -> str:
    """The backend ``--backend auto`` serves on a CPU, from a precision record: the fastest
    servable ONNX one, else torch."""
    backends = record.get("backends", {})
    return next((b for b in CPU_PREFERENCE if backends.get(b, {}).get("servable")), "torch")


def allowed_dims(record: dict[str, Any], backend: str, precision: str) -> list[int]:
    """The dims where ``precision`` may be served by ``backend`` (largest first)."""
    table = record.get("backends", {}).get(backend, {}).get("dims", {})
    return sorted(
        (int(d) for d, row in table.items() if row.get(precision, {}).get("allowed")),
        reverse=True,
    )


def precision_table(record: dict[str, Any], backend: str) -> list[str]:
    """The precision x dim table of one backend, in Markdown (model card, report, README)."""
    entry = record["backends"][backend]
    dims = sorted((int(d) for d in entry["dims"]), reverse=True)
    lines = [
        "| precision | " + " | ".join(f"@{d}" for d in dims) + " | bytes per vector |",
        "|---|" + "---:|" * (len(dims) + 1),
    ]
    for precision in SCORED:
        if precision not in entry["dims"][str(dims[0])]:
            continue
        cells = []
        for d in dims:
            metrics = entry["dims"][str(d)][precision]
            mark = "" if metrics["allowed"] or precision == "binary-rescored" else " (no)"
            cells.append(f"{metrics['map@100']:.4f}{mark}")
        sizes = " / ".join(str(bytes_per_vector(precision, d)) for d in dims)
        label = {"int8": "int8, uint8", "binary": "binary, ubinary"}.get(precision, precision)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {sizes} |")
    return lines


def describe_recommended(recommended: dict[str, Any]) -> str:
    if recommended.get("dim") is None:
        return recommended.get("why", "none")
    return (
        f"{recommended['dim']} dims in {recommended['precision']} ({recommended['bytes']} bytes "
        f"per vector): MAP@100 {recommended['map@100']:.4f}, {recommended['loss']:+.4f} below "
        f"full-dim float32 (allowed loss {recommended['within']})"
    )
