"""Load (query, passage) pairs, clean them, and split them into train and held-out sets.

Sources: the built-in 'debian' set, a local .jsonl / .csv / .parquet file, or a Hugging Face
data set id (only then is the network used). Columns are mapped with ``query_column`` /
``passage_column`` (the seed models used anchor/positive, positive/anchor and
sentence_0/sentence_1). Empty rows and exact duplicates are dropped and counted; a missing
column or too few pairs is an error that names the fix.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainers.config import TrainConfig
from trainers.errors import DataError

logger = logging.getLogger(__name__)

FILE_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
MIN_TRAIN_PAIRS = 8
MIN_EVAL_PAIRS = 4


@dataclass(frozen=True)
class Pair:
    query: str
    passage: str
    group: str


@dataclass(frozen=True)
class Split:
    train: list[Pair]
    test: list[Pair]
    dropped: dict[str, int]


def read_rows(config: TrainConfig) -> tuple[list[dict[str, Any]], str | None]:
    """Raw rows from the configured source, and the group column to use (or None)."""
    source = config.data
    if source == "debian":
        from trainers import debian

        if (config.query_column, config.passage_column) != ("anchor", "positive"):
            raise DataError(
                "the 'debian' data set has the columns anchor (short description) and positive "
                "(long description): leave query_column/passage_column at their defaults"
            )
        return debian.load_pairs(), config.group_column or "source"

    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if path.exists() or suffix in FILE_FORMATS:
        if not path.is_file():
            raise DataError(f"data={source!r}: no such file")
        if suffix not in FILE_FORMATS:
            raise DataError(
                f"data={source!r}: unknown file type {suffix!r}; use one of "
                f"{', '.join(FILE_FORMATS)}"
            )
        from datasets import load_dataset

        dataset = load_dataset(FILE_FORMATS[suffix], data_files=str(path), split="train")
    elif source.count("/") == 1 and not source.startswith((".", "/")):
        from datasets import load_dataset

        logger.info(
            "loading %s (split %s) from the Hugging Face hub (network)", source, config.data_split
        )
        dataset = load_dataset(source, split=config.data_split)
    else:
        raise DataError(
            f"data={source!r}: not 'debian', not an existing .jsonl/.csv/.parquet file, and not "
            "a hub id of the form owner/name"
        )
    columns = list(dataset.column_names)
    wanted = [config.query_column, config.passage_column] + (
        [config.group_column] if config.group_column else []
    )
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise DataError(
            f"column(s) {missing} not in {source}: it has {columns}. Set query_column / "
            "passage_column / group_column to the right names"
        )
    return dataset.select_columns(wanted).to_list(), config.group_column


def clean_pairs(
    rows: list[dict[str, Any]], query_column: str, passage_column: str, group_column: str | None
) -> tuple[list[Pair], dict[str, int]]:
    """Drop empty and duplicate pairs, counting each reason."""
    dropped = {"empty": 0, "duplicate": 0}
    seen: set[tuple[str, str]] = set()
    pairs: list[Pair] = []
    for i, row in enumerate(rows):
        query, passage = row.get(query_column), row.get(passage_column)
        if (
            not isinstance(query, str)
            or not isinstance(passage, str)
            or not query.strip()
            or not passage.strip()
        ):
            dropped["empty"] += 1
            continue
        key = (query.strip(), passage.strip())
        if key in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(key)
        group = (
            str(row[group_column])
            if group_column and row.get(group_column) is not None
            else f"#{i}"
        )
        pairs.append(Pair(key[0], key[1], group))
    if any(dropped.values()):
        logger.warning(
            "dropped %d empty and %d duplicate pairs of %d",
            dropped["empty"],
            dropped["duplicate"],
            len(rows),
        )
    return pairs, dropped


def split_pairs(pairs: list[Pair], eval_size: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Seeded split by group: every pair of a group lands on the same side."""
    groups: dict[str, list[Pair]] = {}
    for pair in pairs:
        groups.setdefault(pair.group, []).append(pair)
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    target = round(eval_size * len(pairs)) if eval_size < 1 else int(eval_size)
    test: list[Pair] = []
    test_groups = set()
    for group in order:
        if len(test) >= target:
            break
        test.extend(groups[group])
        test_groups.add(group)
    train = [p for g in order if g not in test_groups for p in groups[g]]
    return train, test


def load_pairs(config: TrainConfig) -> tuple[list[Pair], dict[str, int]]:
    """Every usable pair of the configured source (cleaned, with its group), and the drop counts."""
    rows, group_column = read_rows(config)
    return clean_pairs(rows, config.query_column, config.passage_column, group_column)


def load_split(config: TrainConfig) -> Split:
    """Everything a run needs from the data: cleaned, split by group, capped as configured."""
    pairs, dropped = load_pairs(config)
    needed = MIN_TRAIN_PAIRS + MIN_EVAL_PAIRS
    if len(pairs) < needed:
        raise DataError(
            f"{config.data} has {len(pairs)} usable pairs after dropping {dropped}: at least "
            f"{needed} are needed"
        )
    if config.eval_size >= 1 and config.eval_size >= len(pairs):
        raise DataError(
            f"eval_size={int(config.eval_size)} leaves no training pairs of {len(pairs)}"
        )
    train, test = split_pairs(pairs, config.eval_size, config.seed)
    if config.max_pairs is not None and len(train) > config.max_pairs:
        train = random.Random(config.seed).sample(train, config.max_pairs)
    if len(train) < MIN_TRAIN_PAIRS or len(test) < MIN_EVAL_PAIRS:
        raise DataError(
            f"split gave {len(train)} train and {len(test)} held-out pairs: need at least "
            f"{MIN_TRAIN_PAIRS} and {MIN_EVAL_PAIRS}; change eval_size or bring more data"
        )
    logger.info("data: %d train pairs, %d held-out pairs (%s)", len(train), len(test), config.data)
    return Split(train=train, test=test, dropped=dropped)


def ir_task(
    test: list[Pair], max_queries: int | None, seed: int
) -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    """Queries, corpus and relevance judgements for the held-out pairs.

    The corpus holds every distinct held-out passage; a query that occurs with several
    passages has all of them as relevant. ``max_queries`` samples queries (seeded), never
    passages, so the corpus stays as large and as hard as the held-out set allows.
    """
    corpus_ids: dict[str, str] = {}
    query_ids: dict[str, str] = {}
    relevant: dict[str, set[str]] = {}
    for pair in test:
        cid = corpus_ids.setdefault(pair.passage, f"d{len(corpus_ids)}")
        qid = query_ids.setdefault(pair.query, f"q{len(query_ids)}")
        relevant.setdefault(qid, set()).add(cid)
    queries = {qid: text for text, qid in query_ids.items()}
    if max_queries is not None and len(queries) > max_queries:
        keep = sorted(
            random.Random(seed).sample(sorted(queries), max_queries), key=lambda q: int(q[1:])
        )
        queries = {qid: queries[qid] for qid in keep}
        relevant = {qid: relevant[qid] for qid in keep}
    corpus = {cid: text for text, cid in corpus_ids.items()}
    return queries, corpus, relevant
