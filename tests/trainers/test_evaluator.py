"""The encode-once evaluator equals sentence-transformers' own per-dim IR evaluator."""

import pytest
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

from trainers.data import Pair, ir_task
from trainers.evaluator import MatryoshkaInformationRetrievalEvaluator

DIMS = (384, 256, 128, 64, 32)


def _task(debian_pairs, n_queries, n_corpus):
    test = [Pair(p["anchor"], p["positive"], p["source"]) for p in debian_pairs[1::37][:n_corpus]]
    return ir_task(test, n_queries, seed=0)


def _assert_equal_to_sentence_transformers(model, queries, corpus, relevant):
    ours = MatryoshkaInformationRetrievalEvaluator(
        queries, corpus, relevant, matryoshka_dims=DIMS, batch_size=32
    )(model)
    compared = 0
    for dim in DIMS:
        theirs = InformationRetrievalEvaluator(
            queries,
            corpus,
            relevant,
            truncate_dim=dim,
            name=f"dim_{dim}",
            batch_size=32,
            write_csv=False,
        )(model)
        assert theirs, "sentence-transformers returned no metrics"
        for key, value in theirs.items():
            assert ours[key] == pytest.approx(value, abs=1e-6), key
            compared += 1
    # accuracy@1/3/5/10, precision@k, recall@k (4 each), ndcg@10, mrr@10, map@100 per dim
    assert compared == len(DIMS) * 15
    return ours


def test_equals_information_retrieval_evaluator_at_every_dim(tiny_model_path, debian_pairs):
    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    queries, corpus, relevant = _task(debian_pairs, 150, 400)
    ours = _assert_equal_to_sentence_transformers(model, queries, corpus, relevant)
    for dim in DIMS:
        assert f"dim_{dim}_cosine_map@100" in ours
    assert ours["mean_cosine_map@100"] == pytest.approx(
        sum(ours[f"dim_{d}_cosine_map@100"] for d in DIMS) / len(DIMS)
    )


@pytest.mark.slow
def test_equals_information_retrieval_evaluator_with_the_bundled_model(debian_pairs):
    from trainers.models import load_model

    model = load_model("bundled:minilm", max_seq_length=128)
    queries, corpus, relevant = _task(debian_pairs, 100, 300)
    ours = _assert_equal_to_sentence_transformers(model, queries, corpus, relevant)
    assert (
        ours["dim_384_cosine_map@100"] > ours["dim_32_cosine_map@100"] > 0.1
    )  # a real model ranks


def test_query_prompt_is_applied_to_queries_only(tiny_model_path):
    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    prompt = "Represent this sentence: "
    # The relevant doc is the prompted query text itself; the distractor is the bare query.
    queries = {"q0": "alpha beta gamma"}
    corpus = {"d0": prompt + "alpha beta gamma", "d1": "alpha beta gamma"}
    relevant = {"q0": {"d0"}}
    plain = MatryoshkaInformationRetrievalEvaluator(
        queries, corpus, relevant, matryoshka_dims=[64]
    )(model)
    prompted = MatryoshkaInformationRetrievalEvaluator(
        queries, corpus, relevant, matryoshka_dims=[64], query_prompt=prompt
    )(model)
    assert plain["dim_64_cosine_accuracy@1"] == 0.0
    assert prompted["dim_64_cosine_accuracy@1"] == 1.0  # and the corpus was not prompted


def test_per_dim_tables_reach_the_model_card(tiny_model_path, debian_pairs):
    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    queries, corpus, relevant = _task(debian_pairs, 20, 60)
    evaluator = MatryoshkaInformationRetrievalEvaluator(
        queries, corpus, relevant, matryoshka_dims=DIMS
    )
    evaluator(model)
    card = model.model_card_data.format_eval_metrics()
    assert len(card["eval_metrics"]) == 1, "the dims should group into one table"
    table = card["eval_metrics"][0]["table"]
    header = table.splitlines()[0]
    for dim in DIMS:
        assert f"dim_{dim}" in header
    assert "cosine_map@100" in table


def test_objective_must_exist_and_dims_must_fit(tiny_model_path):
    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    args = ({"q": "a"}, {"d": "a"}, {"q": {"d"}})
    with pytest.raises(ValueError, match="objective 'mean_dot_map@100'"):
        MatryoshkaInformationRetrievalEvaluator(
            *args, matryoshka_dims=[64], primary="mean_dot_map@100"
        )(model)
    with pytest.raises(
        ValueError, match=r"\[512\] exceed the dimension of the evaluated model \(384\)"
    ):
        MatryoshkaInformationRetrievalEvaluator(*args, matryoshka_dims=[512])(model)
    with pytest.raises(ValueError, match="0 queries and 0 corpus texts.*empty"):
        MatryoshkaInformationRetrievalEvaluator({}, {}, {}, matryoshka_dims=[64])


def test_per_query_average_precision_is_what_map_averages(tiny_model_path, debian_sample_file):
    """The per-query AP@100 a bootstrap resamples has the evaluator's MAP@100 as its mean."""
    from sentence_transformers import SentenceTransformer

    from trainers.config import TrainConfig
    from trainers.tasks import evaluator, pairs_task

    config = TrainConfig(data=str(debian_sample_file), group_column="source")
    config = config.replace(matryoshka_dims=(384, 128, 64))
    task = pairs_task(config, 400, 150, seed=0)
    scorer = evaluator(task, config)
    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    # 64 tokens, and 6, where many passages share their first tokens and so tie: ties break
    # by corpus id as sentence-transformers breaks them (a smoke sweep's 32 tokens tied some).
    for max_seq_length in (64, 6):
        model.max_seq_length = max_seq_length
        metrics = scorer(model)
        per_query = scorer.average_precision(model)
        for dim in (384, 128, 64):
            assert len(per_query[dim]) == 150
            expected = metrics[f"dim_{dim}_cosine_map@100"]
            assert per_query[dim].mean() == pytest.approx(expected, abs=1e-6), max_seq_length


def test_a_paired_bootstrap_of_a_model_against_itself_contains_zero():
    import numpy as np

    from trainers.tasks import paired_bootstrap

    scores = np.random.default_rng(1).random(500)
    assert paired_bootstrap(scores, scores) == (0.0, 0.0, 0.0)
    # A real difference: +0.05 on every query but noisy; the interval holds it, not zero.
    other = scores - 0.05 + np.random.default_rng(2).normal(0, 0.1, 500)
    diff, low, high = paired_bootstrap(scores, other, seed=3)
    assert low < diff < high and low > 0 and low < 0.05 < high
    assert paired_bootstrap(scores, other, seed=3) == (diff, low, high)  # seeded


def test_the_score_cache_is_read_for_the_same_model_and_task_and_missed_for_others(
    tiny_model_path, debian_pairs, tmp_path, monkeypatch
):
    import json

    import torch

    from trainers.config import TrainConfig
    from trainers.tasks import Task, evaluate, evaluate_cached

    monkeypatch.setenv("MATRYOSHKA_CACHE", str(tmp_path))
    config = TrainConfig(model=str(tiny_model_path), matryoshka_dims=(384, 64))
    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    task = Task("t", *_task(debian_pairs, 20, 60))
    first = evaluate_cached(model, task, config)
    assert first == evaluate(model, task, config)
    (cached,) = (tmp_path / "scores").glob("*.json")
    # Read, not recomputed: an edit to the file is what comes back.
    cached.write_text(json.dumps({**first, "dim_64_cosine_map@100": -1.0}))
    assert evaluate_cached(model, task, config)["dim_64_cosine_map@100"] == -1.0
    # Another task, or other weights, is another entry.
    fewer = Task("t", dict(list(task.queries.items())[:10]), task.corpus, task.relevant)
    evaluate_cached(model, fewer, config)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    evaluate_cached(model, task, config)
    assert len(list((tmp_path / "scores").glob("*.json"))) == 3
