"""Hard negatives: for each training pair, passages the base model ranks high but that are not
the pair's own, mined once and cached.

``train_rows`` turns a run's training pairs into the columns the trainer reads: ``anchor``,
``positive`` and, with ``hard_negatives:`` set, ``negative_1`` ... ``negative_n``.
MultipleNegativesRankingLoss (and its cached variant) scores each query against every passage
and negative of the batch, so under MatryoshkaLoss the mined negatives sharpen every dim.

Mining is sentence-transformers' ``util.mine_hard_negatives`` with the **base** model (the
config's ``model``, never a checkpoint being trained):

- corpus: the train split's passages, a seeded sample of ``pool`` of them plus the pairs' own;
- candidates: the top ``range_max`` of each query's ranking, without its own positive(s);
- false-negative filter: ``relative_margin`` (NV-Retriever, Moreira et al. 2024: a candidate
  scoring within 5% of the positive's score is more likely an unlabelled positive than a
  negative), then the ``num_negatives`` best of what is left; a pair with fewer is dropped,
  and if fewer than half the pairs are left, mining stops with an error that says why.

The result is cached in ``MATRYOSHKA_CACHE``/negatives/, keyed by a hash of the base model's
weights, the pairs, the pool and the settings, under a file lock: in a sweep the first trial
(or the sweep itself, before the trials start) mines, and every later trial and the refit read
the file. The pool's embeddings are cached beside it, so mining for another set of pairs of the
same split (the refit's) encodes only the new queries.

    python -m trainers.train --hard_negatives '{num_negatives: 1, relative_margin: 0.05}'
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainers.config import HardNegatives, TrainConfig
from trainers.data import Pair, Split, sample
from trainers.debian import cache_dir, write_cache_text
from trainers.errors import DataError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
MIN_KEPT = 0.5  # below this share of pairs kept, mining is refused: training would shrink


def train_rows(
    config: TrainConfig, split: Split, base: SentenceTransformer | None = None
) -> tuple[dict[str, list[str]], dict[str, Any] | None]:
    """The training columns of ``split.train``, and the mining record (None without
    ``hard_negatives``). ``base``: the base model if already loaded (it must be untrained)."""
    rows = {"anchor": [p.query for p in split.train], "positive": [p.passage for p in split.train]}
    if config.hard_negatives is None:
        return rows, None
    return mine(config, split, base)


def pool_of(split: Split, settings: HardNegatives, seed: int) -> list[str]:
    """The passages mined among: a seeded sample of the train split's (by each pair's own hash,
    as every capped set here), deduplicated. ``mine_hard_negatives`` adds the pairs' own."""
    pairs: list[Pair] = split.train_pool or split.train
    if settings.pool is not None and len(pairs) > settings.pool:
        pairs = sample(pairs, settings.pool, seed)
    return list(dict.fromkeys(p.passage for p in pairs))


def mine(
    config: TrainConfig, split: Split, base: SentenceTransformer | None = None
) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """(anchor, positive, negative_1..n) columns for ``split.train``, from the cache or mined
    now; and the record: pairs in, pairs kept, candidates the margin filtered, seconds."""
    from trainers.models import load_model, weights_digest

    settings = config.hard_negatives
    if base is None:
        base = load_model(config.model, config.max_seq_length)
    model_key = weights_digest(base)[:16]
    pool = pool_of(split, settings, config.seed)
    pairs = [(p.query, p.passage) for p in split.train]
    key = hashlib.sha256(
        json.dumps(
            [
                CACHE_VERSION,
                model_key,
                base.max_seq_length,
                config.query_prompt,
                settings.to_dict(),
                pairs,
                pool,
            ]
        ).encode()
    ).hexdigest()[:32]
    folder = cache_dir() / "negatives" / model_key
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.json"
    # One miner at a time per model: a second trial waits for the first and reads its file.
    with (folder / "lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if path.is_file():
                cached = json.loads(path.read_text())
                cached["record"]["from_cache"] = True
                logger.info("hard negatives: read %s", path)
                return cached["columns"], cached["record"]
            columns, record = _mine(base, pairs, pool, settings, config.query_prompt, folder)
            write_cache_text(path, json.dumps({"columns": columns, "record": record}))
            return columns, {**record, "from_cache": False}
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def mine_for(configs: list[TrainConfig]) -> list[dict[str, Any]]:
    """Mine (or read) the negatives of each config's training pairs, loading the base model
    once: what a sweep runs before its trials (the trials' pairs, the refit's)."""
    from trainers.data import load_split
    from trainers.models import load_model

    base = load_model(configs[0].model, configs[0].max_seq_length)
    return [mine(config, load_split(config), base)[1] for config in configs]


def _mine(
    base: SentenceTransformer,
    pairs: list[tuple[str, str]],
    pool: list[str],
    settings: HardNegatives,
    query_prompt: str,
    folder: Path,
) -> tuple[dict[str, list[str]], dict[str, Any]]:
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    started = time.perf_counter()
    dataset = Dataset.from_dict(
        {"anchor": [q for q, _ in pairs], "positive": [p for _, p in pairs]}
    )
    printed = io.StringIO()
    # sentence-transformers prints what it filtered and dropped; that is the record's source.
    with contextlib.redirect_stdout(printed):
        mined = mine_hard_negatives(
            dataset,
            base,
            corpus=pool,
            num_negatives=settings.num_negatives,
            relative_margin=settings.relative_margin,
            range_max=max(settings.range_max, settings.num_negatives + 1),
            sampling_strategy="top",
            query_prompt=query_prompt or None,  # as training encodes the queries
            output_format="n-tuple",
            batch_size=64,
            use_faiss=False,
            # The pool's embeddings, by its texts; the folder is per model (weights hash).
            cache_folder=str(folder),
            verbose=True,
        )
    text = printed.getvalue()
    skipped = re.search(r"Skipped ([\d,]+) potential negatives \(([\d.]+)%\)", text)
    record = {
        "pairs": len(pairs),
        "kept": len(mined),
        "dropped": len(pairs) - len(mined),
        "num_negatives": settings.num_negatives,
        "relative_margin": settings.relative_margin,
        "pool": len(dict.fromkeys(pool + [p for _, p in pairs])),
        "range_max": settings.range_max,
        "filtered_by_margin": int(skipped.group(1).replace(",", "")) if skipped else 0,
        "filtered_share": float(skipped.group(2)) / 100 if skipped else 0.0,
        "seconds": round(time.perf_counter() - started, 1),
    }
    logger.info("hard negatives: %s", record)
    if record["kept"] < MIN_KEPT * len(pairs):
        raise DataError(
            f"hard negatives: only {record['kept']} of {len(pairs)} pairs kept "
            f"{settings.num_negatives} negative(s); relative_margin={settings.relative_margin} "
            f"filtered {record['filtered_share']:.0%} of the candidates (a model that scores "
            "every passage alike, e.g. an untrained one, leaves none). Lower relative_margin, "
            "raise range_max or pool, or set hard_negatives: null"
        )
    return {column: list(mined[column]) for column in mined.column_names}, record


def describe(record: dict[str, Any]) -> str:
    """One line for a console or a report."""
    margin = record["relative_margin"]
    return (
        f"{record['kept']} of {record['pairs']} pairs with {record['num_negatives']} mined "
        f"negative(s) among {record['pool']} passages (top {record['range_max']}"
        + (
            f", relative margin {margin:g}: {record['filtered_by_margin']:,} candidates "
            f"({record['filtered_share']:.1%}) filtered"
            if margin is not None
            else ""
        )
        + f"), {record['seconds']:.0f} s"
        + (", read from the cache" if record.get("from_cache") else "")
    )
