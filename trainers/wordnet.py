"""The built-in guard set: WordNet's English definitions as (words -> definition) pairs.

A guard set checks that fine-tuning on one narrow domain (the Debian descriptions) did not
cost what the base model knew elsewhere. WordNet is general English, far from software
package descriptions, and Debian ships it (package ``wordnet-base``, WordNet 3.0), so it is
fetched with apt's own client like the Debian pairs, once, then cached:

    apt-get download wordnet-base       (package lists in a private folder, as for 'debian')
    dpkg-deb -x wordnet-base_*.deb      -> /usr/share/wordnet/data.{noun,verb,adj,adv}

Query = a synset's words ("laying waste, ruin, ruining, ruination, wrecking"), passage = its
gloss ("destruction achieved by causing something to be wrecked or ruined"). Only synsets
with at least two words and a word list of their own are kept, so each query has one answer.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from trainers.debian import cache_dir, download_packages, read_cache, write_cache

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
PACKAGE = "wordnet-base"
PARTS_OF_SPEECH = ("noun", "verb", "adj", "adv")


def cache_path() -> Path:
    return cache_dir() / f"wordnet-pairs-v{CACHE_VERSION}.jsonl"


def load_pairs() -> list[dict[str, str]]:
    """The WordNet pairs, from the cache, else built with apt (once per machine)."""
    path = cache_path()
    cached = read_cache(path)
    if cached is not None:
        return cached
    pairs = build_pairs()
    write_cache(path, pairs)
    return pairs


def origin() -> dict[str, object]:
    """What the cached set is: Debian's wordnet-base, and the cache file's sha256."""
    checksum = cache_path().with_suffix(cache_path().suffix + ".sha256")
    return {
        "apt": f"Debian package {PACKAGE}",
        "cache_sha256": checksum.read_text().strip()[:16] if checksum.is_file() else None,
    }


def build_pairs() -> list[dict[str, str]]:
    with tempfile.TemporaryDirectory(prefix="wordnet-") as tmp:
        root = download_packages([PACKAGE], tmp, "the built-in 'wordnet' guard set")
        folder = root / "usr" / "share" / "wordnet"
        synsets = [s for pos in PARTS_OF_SPEECH for s in parse_data(folder / f"data.{pos}")]
    return clean(synsets)


def parse_data(path: Path) -> Iterator[tuple[str, list[str], str]]:
    """(synset id, words, gloss) of every synset in a WordNet ``data.<pos>`` file.

    A line is ``offset lex_filenum ss_type w_cnt word lex_id [word lex_id ...] ... | gloss``
    with w_cnt in hexadecimal; lines that start with two spaces are the license header.
    """
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("  ") or "|" not in line:
                continue
            head, _, gloss = line.partition("|")
            fields = head.split()
            count = int(fields[3], 16)
            words = [w.replace("_", " ") for w in fields[4 : 4 + 2 * count : 2]]
            yield f"{fields[2]}{fields[0]}", words, gloss.strip()


def clean(synsets: list[tuple[str, list[str], str]]) -> list[dict[str, str]]:
    """Keep synsets with two or more words, a gloss, and a word list no other synset has."""
    queries = [", ".join(dict.fromkeys(w.casefold() for w in words)) for _, words, _ in synsets]
    counts = Counter(queries)
    pairs = [
        {"anchor": query, "positive": gloss, "synset": synset}
        for (synset, words, gloss), query in zip(synsets, queries, strict=True)
        if len(words) >= 2 and gloss and counts[query] == 1
    ]
    logger.info("WordNet pairs: %d synsets, kept %d", len(synsets), len(pairs))
    return pairs
