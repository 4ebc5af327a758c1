"""Hard-negative mining (trainers/negatives.py) with real models, a real cache and real
processes: what is mined, what the margin filters, and that a second run reads the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trainers import negatives
from trainers.config import HardNegatives, TrainConfig
from trainers.data import Pair, Split

REPO = Path(__file__).resolve().parents[2]


def _split(pairs: list[Pair], extra: list[Pair]) -> Split:
    return Split(
        train=pairs, validation=[], test=[], dropped={}, fingerprint={}, train_pool=pairs + extra
    )


def _near_duplicate(text: str) -> str:
    return text.rstrip(".") + " ."  # the same passage, one character apart


@pytest.fixture(scope="module")
def minilm():
    from trainers.models import load_model

    return load_model("bundled:minilm", 64)


def test_negatives_are_never_the_positive_and_the_margin_drops_near_duplicates(
    debian_pairs, minilm, tmp_path, monkeypatch
):
    monkeypatch.setenv("MATRYOSHKA_CACHE", str(tmp_path))
    pairs = [Pair(p["anchor"], p["positive"], p["source"]) for p in debian_pairs[::97][:80]]
    twins = [Pair(f"twin {i}", _near_duplicate(p.passage), "twin") for i, p in enumerate(pairs)]
    split = _split(pairs, twins)
    twin_of = {p.passage: t.passage for p, t in zip(pairs, twins, strict=True)}

    def mined(margin):
        config = TrainConfig(
            max_seq_length=64,
            hard_negatives=HardNegatives(num_negatives=2, relative_margin=margin, pool=None),
        )
        columns, record = negatives.train_rows(config, split, minilm)
        assert set(columns) == {"anchor", "positive", "negative_1", "negative_2"}
        own_twins = 0
        for i, positive in enumerate(columns["positive"]):
            chosen = (columns["negative_1"][i], columns["negative_2"][i])
            assert positive not in chosen
            own_twins += twin_of[positive] in chosen
        return own_twins, record

    # Without a margin, a passage's near-twin is its query's hardest "negative": a false one.
    # (Another pair's twin is a fair negative: it is that pair's passage.)
    unfiltered, record = mined(None)
    assert unfiltered >= 0.8 * len(pairs) and record["filtered_by_margin"] == 0
    # NV-Retriever's relative margin of 0.05 drops them (all but a twin whose positive scores
    # so low that 5% of it is less than the one character's difference).
    filtered, record = mined(0.05)
    assert filtered <= 0.05 * len(pairs) and record["filtered_by_margin"] >= 0.8 * len(pairs)
    assert record["pairs"] == len(pairs) and record["kept"] + record["dropped"] == len(pairs)
    assert record["pool"] == 2 * len(pairs) and not record["from_cache"]


MINE = textwrap.dedent(
    """
    import json, sys
    from trainers import negatives
    from trainers.config import TrainConfig, parse
    from trainers.data import load_split
    config = parse(TrainConfig, json.loads(sys.argv[1]))
    columns, record = negatives.train_rows(config, load_split(config))
    print(json.dumps(record))
    """
)


def test_two_runs_at_once_mine_once_and_the_second_reads_the_cache(tiny_model_path, tmp_path):
    """As two trials of a sweep starting together: one mines under the cache's lock, the
    other waits and reads its file; a third, later, reads it too."""
    config = {
        "model": str(tiny_model_path),
        "data": "debian",
        "max_pairs": 64,
        "eval_size": 60,
        "max_seq_length": 32,
        "hard_negatives": {"num_negatives": 1, "relative_margin": None, "pool": 1500},
    }
    env = {**os.environ, "MATRYOSHKA_CACHE": str(tmp_path)}
    # The Debian pairs come from the user's cache (debian_pairs built it), copied.
    from trainers.debian import cache_dir

    for name in (
        "debian-pairs-v2.jsonl",
        "debian-pairs-v2.jsonl.sha256",
        "debian-pairs-v2.meta.json",
    ):
        (tmp_path / name).write_bytes((cache_dir() / name).read_bytes())
    command = [sys.executable, "-c", MINE, json.dumps(config)]
    runs = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)]
    runs.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True))
    records = [json.loads(run.communicate(timeout=300)[0].splitlines()[-1]) for run in runs]
    assert sorted(r["from_cache"] for r in records) == [False, True]
    later = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert json.loads(later.stdout.splitlines()[-1])["from_cache"] is True
    assert len(list((tmp_path / "negatives").glob("*/*.json"))) == 1


def test_mining_that_leaves_too_few_pairs_stops_with_the_fix(
    tiny_model_path, debian_pairs, tmp_path, monkeypatch
):
    from trainers.errors import DataError
    from trainers.models import load_model

    monkeypatch.setenv("MATRYOSHKA_CACHE", str(tmp_path))
    pairs = [Pair(p["anchor"], p["positive"], p["source"]) for p in debian_pairs[::97][:60]]
    config = TrainConfig(
        model=str(tiny_model_path),
        max_seq_length=32,
        hard_negatives=HardNegatives(num_negatives=1, relative_margin=0.05, pool=None),
    )
    # An untrained model scores every passage alike: the margin filters every candidate.
    with pytest.raises(DataError, match="Lower relative_margin"):
        negatives.train_rows(config, _split(pairs, []), load_model(str(tiny_model_path), 32))
    assert not list((tmp_path / "negatives").glob("*/*.json"))  # nothing cached
