import json

import pandas as pd
import pytest

from trainers.config import TrainConfig
from trainers.data import DataError, Pair, clean_pairs, ir_task, load_split, split_pairs


def _rows(n, groups=5):
    return [
        {"sentence_0": f"query {i}", "sentence_1": f"passage number {i}", "doc": f"g{i % groups}"}
        for i in range(n)
    ]


def _config(path, **kw):
    base = dict(
        data=str(path), query_column="sentence_0", passage_column="sentence_1", eval_size=0.25
    )
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_every_file_format_with_a_column_mapping(tmp_path, suffix):
    path = tmp_path / f"pairs{suffix}"
    frame = pd.DataFrame(_rows(40))
    if suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    split = load_split(_config(path, group_column="doc", test_size=0.2))
    assert len(split.train) + len(split.validation) + len(split.test) == 40
    assert split.validation and split.test
    sides = [{p.group for p in side} for side in (split.train, split.validation, split.test)]
    assert sides[0].isdisjoint(sides[1]) and sides[0].isdisjoint(sides[2])
    assert sides[1].isdisjoint(sides[2])
    assert split.train[0].query.startswith("query ")


def test_missing_column_names_the_columns_that_exist(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows(20)))
    with pytest.raises(DataError, match=r"\['anchor'\].*sentence_0"):
        load_split(TrainConfig(data=str(path), passage_column="sentence_1"))


def test_empty_and_duplicate_pairs_are_dropped_and_counted():
    rows = _rows(10) + [
        {"sentence_0": "", "sentence_1": "x"},
        {"sentence_0": "q", "sentence_1": None},
        {"sentence_0": "   ", "sentence_1": "y"},
        dict(_rows(1)[0]),
    ]
    pairs, dropped = clean_pairs(rows, "sentence_0", "sentence_1", None)
    assert len(pairs) == 10
    assert dropped == {"empty": 3, "duplicate": 1}


def test_too_few_pairs_is_a_clear_error(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows(5)))
    with pytest.raises(DataError, match="5 usable pairs.*at least 12"):
        load_split(_config(path))


def test_unknown_file_type_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_split(_config(tmp_path / "missing.jsonl"))
    (tmp_path / "pairs.txt").write_text("hello")
    with pytest.raises(DataError, match="unknown file type"):
        load_split(_config(tmp_path / "pairs.txt"))


def test_group_split_is_seeded_and_never_shares_a_group():
    pairs = [Pair(f"q{i}", f"p{i}", f"g{i % 17}") for i in range(500)]
    train_a, test_a = split_pairs(pairs, 0.2, seed=1)
    train_b, test_b = split_pairs(pairs, 0.2, seed=1)
    _, test_c = split_pairs(pairs, 0.2, seed=2)
    assert test_a == test_b and train_a == train_b
    assert test_a != test_c
    assert {p.group for p in train_a}.isdisjoint({p.group for p in test_a})
    assert 100 <= len(test_a) < 100 + 30  # whole groups of ~29: may overshoot by one group


def test_max_pairs_caps_training_only(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows(200)))
    split = load_split(_config(path, eval_size=50, test_size=40, max_pairs=30))
    assert len(split.train) == 30 and len(split.validation) == 50 and len(split.test) == 40


def test_ir_task_merges_repeated_queries_and_samples_queries_only():
    test = [Pair("q", "a", "1"), Pair("q", "b", "1"), Pair("r", "c", "2"), Pair("s", "a", "3")]
    queries, corpus, relevant = ir_task(test, None, seed=0)
    assert sorted(corpus.values()) == ["a", "b", "c"]
    qid = next(k for k, v in queries.items() if v == "q")
    assert {corpus[c] for c in relevant[qid]} == {"a", "b"}
    queries, corpus, relevant = ir_task(test, 2, seed=0)
    assert len(queries) == 2 and len(corpus) == 3 and set(relevant) == set(queries)


def test_debian_source_groups_split_real_data(debian_pairs):
    assert len(debian_pairs) > 40_000
    split = load_split(TrainConfig(eval_size=2000, test_size=1000))
    assert len(split.validation) >= 2000 and len(split.test) >= 1000
    train_sources = {p.group for p in split.train}
    assert train_sources.isdisjoint({p.group for p in split.validation})
    assert train_sources.isdisjoint({p.group for p in split.test})
    assert {p.group for p in split.validation}.isdisjoint({p.group for p in split.test})


def test_removing_one_package_keeps_the_other_pairs_in_their_split(debian_pairs):
    """A split by each group's own hash: the day's package lists gaining or losing a package
    move that package only (and the few at a part's boundary). A seeded shuffle of the sorted
    groups kept 40% in place; at least 99% must stay."""
    from trainers.data import Pair, split_groups

    pairs = [Pair(p["anchor"], p["positive"], p["source"]) for p in debian_pairs]
    sizes = [1000, 1000]  # the default sweep's validation and test sizes
    before = split_groups(pairs, sizes, seed=42)
    where = {(p.query, p.passage): i for i, part in enumerate(before) for p in part}
    for victim in (before[0][0].group, before[1][0].group, before[2][0].group):
        after = split_groups([p for p in pairs if p.group != victim], sizes, seed=42)
        kept = sum(where[(p.query, p.passage)] == i for i, part in enumerate(after) for p in part)
        others = sum(1 for p in pairs if p.group != victim)
        assert kept / others >= 0.99, f"removing {victim}: {kept / others:.4f} kept their split"
        for part, size in zip(after[:2], sizes, strict=True):
            assert size <= len(part) < size + 50  # the requested size, plus part of one group


def test_a_capped_train_set_and_sampled_queries_survive_one_pair_more():
    from trainers.data import Pair, sample

    pairs = [Pair(f"q{i}", f"p{i}", f"g{i}") for i in range(1000)]
    a = sample(pairs, 100, seed=3)
    b = sample(pairs + [Pair("new", "new passage", "gx")], 100, seed=3)
    assert len(set(a) & set(b)) >= 99
    queries_a, _, _ = ir_task(pairs, 50, seed=3)
    queries_b, _, _ = ir_task(pairs[1:], 50, seed=3)
    assert len(set(queries_a.values()) & set(queries_b.values())) >= 49


def test_the_fingerprint_names_the_source_and_each_split(tmp_path):
    from trainers.data import compare

    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows(200)))
    first = load_split(_config(path, group_column="doc", test_size=0.2)).fingerprint
    again = load_split(_config(path, group_column="doc", test_size=0.2)).fingerprint
    assert first == again and first["pairs"] == 200 and first["origin"]["file"] == str(path)
    assert set(first["splits"]) == {"train", "validation", "test"}
    assert sum(s["pairs"] for s in first["splits"].values()) == 200
    assert compare(first, again).startswith("the splits match")
    other = load_split(_config(path, group_column="doc", test_size=0.2, seed=7)).fingerprint
    assert compare(first, other).startswith("the splits differ: train")
    assert "cannot tell" in compare(first, None)


def test_a_runs_pairs_file_reproduces_its_debian_splits(debian_pairs, tmp_path):
    """What a sweep pins (runs/<name>/data/pairs.jsonl), read back as --data with --group_column
    group, gives the very splits the built-in set gave: the way to share them."""
    from trainers.data import compare, save_pairs

    sizes = dict(eval_size=1000, test_size=1000, max_pairs=500)
    built_in = load_split(TrainConfig(**sizes))
    assert built_in.fingerprint["origin"]["releases"], "the package lists' suites and dates"
    path = save_pairs(TrainConfig(), tmp_path / "data" / "pairs.jsonl")
    again = load_split(TrainConfig(data=str(path), group_column="group", **sizes))
    assert compare(built_in.fingerprint, again.fingerprint).startswith("the splits match")
    assert again.train == built_in.train  # the capped training pairs too


def test_compare_command_says_whether_two_runs_used_the_same_splits(tmp_path, capsys):
    from trainers import cli, data

    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows(200)))
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        seen = load_split(_config(path, group_column="doc", seed=seed)).fingerprint
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps({"data": seen}))
    assert cli.run(data._main, ["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "the splits match" in capsys.readouterr().out
    assert cli.run(data._main, ["compare", str(tmp_path / "a"), str(tmp_path / "c")]) == 1
    assert "the splits differ: train" in capsys.readouterr().out
    assert cli.run(data._main, ["compare", str(tmp_path / "a")]) == 2
