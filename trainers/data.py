"""Load (query, passage) pairs, clean them, and split them into train and held-out sets.

Sources: the built-in 'debian' set, a local .jsonl / .csv / .parquet file, or a Hugging Face
data set id (only then is the network used). Columns are mapped with ``query_column`` /
``passage_column`` (the seed models used anchor/positive, positive/anchor and
sentence_0/sentence_1). Empty rows and exact duplicates are dropped and counted; a missing
column or too few pairs is an error that names the fix.

Every split carries a fingerprint of what was read and how it was split; two runs used the
same pairs only if their splits' hashes match:

    python -m trainers.data compare runs/local runs/try2     # exit 0 if the splits match
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

from trainers.config import TrainConfig
from trainers.docsets import NAMES as DOCSETS
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
    """Train, validation (the best epoch and trial are picked on it) and test (the final
    verdict, never used to pick anything; empty unless test_size is set): no group (package,
    document) on two sides. ``fingerprint``: what was read and how it was split (see
    ``fingerprint``), recorded in every report so that two runs can be compared."""

    train: list[Pair]
    validation: list[Pair]
    test: list[Pair]
    dropped: dict[str, int]
    fingerprint: dict[str, Any]
    # The whole train split before max_pairs capped ``train``: what hard negatives are mined
    # among (trainers/negatives.py).
    train_pool: list[Pair] = field(default_factory=list, repr=False)


def rank(seed: int, key: str) -> bytes:
    """A stable pseudo-random sort key for ``key`` under ``seed``: the same on every machine
    and Python, and independent of every other key, so adding or removing one item moves no
    other item's place in an order sorted by it (a seeded shuffle reorders almost all)."""
    return hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=8).digest()


def sample(pairs: list[Pair], n: int, seed: int) -> list[Pair]:
    """``n`` of ``pairs``, chosen by ``rank``: one pair more or less in ``pairs`` changes at
    most one chosen pair."""
    return sorted(pairs, key=lambda p: rank(seed, f"{p.query}\0{p.passage}"))[:n]


def digest(pairs: list[Pair]) -> str:
    """The sha256 (first 16 hex digits) of a set of pairs, whatever their order."""
    lines = sorted(f"{p.query}\t{p.passage}\n" for p in pairs)
    return hashlib.sha256("".join(lines).encode()).hexdigest()[:16]


class PairsSource(Protocol):
    """What names a set of (query, passage) pairs: a TrainConfig, or a sweep's guard set."""

    data: str
    data_split: str
    query_column: str
    passage_column: str
    group_column: str | None


# The built-in sets: name -> (module that builds them, their group column). Built once, with
# apt from Debian's archive (python-docstrings: from this Python's own library), then cached
# (see the modules). Those of trainers.docsets take their name as the argument.
BUILT_IN = {
    "debian": ("trainers.debian", "source"),
    "wordnet": ("trainers.wordnet", "synset"),
    **{name: ("trainers.docsets", "entry") for name in DOCSETS},
}


def _built_in(name: str):
    """The module that builds built-in set ``name``, and the arguments its functions take."""
    import importlib

    module = importlib.import_module(BUILT_IN[name][0])
    return module, (name,) if module.__name__ == "trainers.docsets" else ()


def read_rows(config: PairsSource) -> tuple[list[dict[str, Any]], str | None]:
    """Raw rows from the configured source, and the group column to use (or None)."""
    source = config.data
    if source in BUILT_IN:
        group = BUILT_IN[source][1]
        if (config.query_column, config.passage_column) != ("anchor", "positive"):
            raise DataError(
                f"the '{source}' data set has the columns anchor (the query) and positive (the "
                "passage): leave query_column/passage_column at their defaults"
            )
        module, args = _built_in(source)
        return module.load_pairs(*args), config.group_column or group

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
            f"data={source!r}: not a built-in set ({', '.join(BUILT_IN)}), not an existing "
            ".jsonl/.csv/.parquet file, and not a hub id of the form owner/name"
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


def split_groups(pairs: list[Pair], sizes: list[float], seed: int) -> list[list[Pair]]:
    """Seeded split by group: held-out parts of the given sizes (a fraction or a count each,
    0 = empty), filled in turn with whole groups in the order of ``rank(seed, group)``, then
    the rest. Every pair of a group lands in one part, and each group's place depends on its
    own name only: removing one group moves at most the groups at the parts' boundaries (a
    test: removing one Debian source package keeps over 99% of the other pairs in place)."""
    groups: dict[str, list[Pair]] = {}
    for pair in pairs:
        groups.setdefault(pair.group, []).append(pair)
    order = sorted(groups, key=lambda g: rank(seed, g))
    parts: list[list[Pair]] = []
    position = 0
    for size in sizes:
        target = round(size * len(pairs)) if size < 1 else int(size)
        part: list[Pair] = []
        while len(part) < target and position < len(order):
            part.extend(groups[order[position]])
            position += 1
        parts.append(part)
    parts.append([p for g in order[position:] for p in groups[g]])
    return parts


def split_pairs(pairs: list[Pair], eval_size: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Seeded split by group into (train, held out): every pair of a group on one side."""
    held_out, train = split_groups(pairs, [eval_size], seed)
    return train, held_out


def load_pairs(config: PairsSource) -> tuple[list[Pair], dict[str, int]]:
    """Every usable pair of the configured source (cleaned, with its group), and the drop counts.

    Read once per process and source: a sweep's reused trial processes (reuse_actors) and its
    refit read the same data again and again.
    """
    key = (config.data, config.data_split, config.query_column, config.passage_column)
    pairs, dropped = _cached_pairs(*key, config.group_column)
    return list(pairs), dict(dropped)


@functools.lru_cache(maxsize=4)
def _cached_pairs(
    data: str, data_split: str, query_column: str, passage_column: str, group_column: str | None
) -> tuple[tuple[Pair, ...], dict[str, int]]:
    source = SimpleNamespace(
        data=data,
        data_split=data_split,
        query_column=query_column,
        passage_column=passage_column,
        group_column=group_column,
    )
    rows, group = read_rows(source)
    pairs, dropped = clean_pairs(rows, query_column, passage_column, group)
    return tuple(pairs), dropped


def load_split(config: TrainConfig) -> Split:
    """Everything a run needs from the data: cleaned, split by group, capped as configured."""
    pairs, dropped = load_pairs(config)
    needed = MIN_TRAIN_PAIRS + MIN_EVAL_PAIRS
    if len(pairs) < needed:
        raise DataError(
            f"{config.data} has {len(pairs)} usable pairs after dropping {dropped}: at least "
            f"{needed} are needed"
        )
    held_out = sum(s if s >= 1 else s * len(pairs) for s in (config.eval_size, config.test_size))
    if held_out >= len(pairs):
        raise DataError(
            f"eval_size={config.eval_size:g} and test_size={config.test_size:g} leave no training "
            f"pairs of {len(pairs)}"
        )
    validation, test, train = split_groups(pairs, [config.eval_size, config.test_size], config.seed)
    seen = fingerprint(config, pairs, dropped, train, validation, test)
    pool = train
    if config.max_pairs is not None and len(train) > config.max_pairs:
        train = sample(train, config.max_pairs, config.seed)
    if len(train) < MIN_TRAIN_PAIRS or len(validation) < MIN_EVAL_PAIRS:
        raise DataError(
            f"split gave {len(train)} train and {len(validation)} validation pairs: need at least "
            f"{MIN_TRAIN_PAIRS} and {MIN_EVAL_PAIRS}; change eval_size or bring more data"
        )
    if config.test_size and len(test) < MIN_EVAL_PAIRS:
        raise DataError(f"test_size={config.test_size:g} gave {len(test)} test pairs: need >= 4")
    logger.info(
        "data: %d train, %d validation, %d test pairs (%s)",
        len(train),
        len(validation),
        len(test),
        config.data,
    )
    return Split(
        train=train,
        validation=validation,
        test=test,
        dropped=dropped,
        fingerprint=seen,
        train_pool=pool,
    )


def fingerprint(
    config: TrainConfig,
    pairs: list[Pair],
    dropped: dict[str, int],
    train: list[Pair],
    validation: list[Pair],
    test: list[Pair],
) -> dict[str, Any]:
    """What a run read and how it split it: the source (for 'debian', the package lists' suites
    and dates), the pair counts and a hash of each part's pairs. Two runs whose ``splits``
    match trained and were scored on the same pairs (``compare`` says so)."""
    return {
        "source": config.data,
        "origin": origin(config),
        "pairs": len(pairs),
        "dropped": dict(dropped),
        "seed": config.seed,
        "all": digest(pairs),
        "splits": {
            name: {"pairs": len(part), "sha256": digest(part)}
            for name, part in (("train", train), ("validation", validation), ("test", test))
        },
    }


def compare(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str:
    """One line: whether two fingerprints' splits hold the same pairs, and where not."""
    if not a or not b:
        return "no data fingerprint on one side: cannot tell whether the splits match"
    differ = [
        f"{name} ({a['splits'][name]['sha256']} vs {b['splits'].get(name, {}).get('sha256')})"
        for name in a["splits"]
        if a["splits"][name] != b["splits"].get(name)
    ]
    if not differ:
        return "the splits match (same pairs in train, validation and test)"
    return "the splits differ: " + ", ".join(differ)


def describe_source(seen: dict[str, Any]) -> str:
    """A fingerprint's source in words: the package lists' suites and dates, a file's hash."""
    where = seen["origin"]
    if "releases" in where:
        dated = ", ".join(f"{r.get('codename')} {r.get('date')}" for r in where["releases"])
        return f"{seen['source']} (package lists fetched {where.get('fetched')}: {dated})"
    if "file" in where:
        return f"{where['file']} (sha256 {where['sha256']})"
    return seen["source"]


def describe_fingerprint(seen: dict[str, Any]) -> str:
    """One line for a console or a report: source, lists' dates, each split's count and hash."""
    splits = ", ".join(
        f"{name} {part['pairs']} pairs sha256 {part['sha256']}"
        for name, part in seen["splits"].items()
    )
    return f"{describe_source(seen)}; {seen['pairs']} pairs, seed {seen['seed']}: {splits}"


def save_pairs(config: PairsSource, path: Path) -> Path:
    """Write every usable pair of ``config``'s source to ``path`` (JSONL: anchor, positive,
    group), so that another machine or day reproduces the same splits with
    ``--data PATH --group_column group`` (the default data set changes with the package
    lists; this file does not)."""
    pairs, _ = load_pairs(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = ({"anchor": p.query, "positive": p.passage, "group": p.group} for p in pairs)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    tmp.replace(path)
    return path


def origin(config: PairsSource) -> dict[str, Any]:
    """Where the pairs came from: a built-in set's own record (what apt fetched, when), a
    file's sha256, or a hub id."""
    if config.data in BUILT_IN:
        module, args = _built_in(config.data)
        return module.origin(*args)
    path = Path(config.data).expanduser()
    if path.is_file():
        return {"file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16]}
    return {"hub": config.data, "split": config.data_split}


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
        # By each query's own text (rank): the same queries are kept on any machine, and one
        # pair more or less in ``test`` changes at most one of them.
        chosen = sorted(queries, key=lambda q: rank(seed, queries[q]))[:max_queries]
        keep = sorted(chosen, key=lambda q: int(q[1:]))
        queries = {qid: queries[qid] for qid in keep}
        relevant = {qid: relevant[qid] for qid in keep}
    corpus = {cid: text for text, cid in corpus_ids.items()}
    return queries, corpus, relevant


def read_fingerprint(path: str | Path) -> dict[str, Any] | None:
    """The data fingerprint of a run: a sweep folder (runs/<name>), a model folder or a
    metrics.json (a trainers run's or an export's)."""
    path = Path(path)
    for candidate in (path, path / "metrics.json", path / "best" / "metrics.json"):
        if candidate.is_file():
            return json.loads(candidate.read_text()).get("data")
    raise DataError(f"{path}: no metrics.json there (a sweep folder, a model folder or the file)")


def _main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "compare":
        raise DataError("usage: python -m trainers.data compare RUN_A RUN_B")
    a, b = read_fingerprint(argv[1]), read_fingerprint(argv[2])
    for name, seen in ((argv[1], a), (argv[2], b)):
        print(f"{name}: {describe_fingerprint(seen) if seen else 'no data fingerprint'}")
    verdict = compare(a, b)
    print(verdict)
    return 0 if verdict.startswith("the splits match") else 1


if __name__ == "__main__":
    import sys

    from trainers import cli

    sys.exit(cli.run(_main))
