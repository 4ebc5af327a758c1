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
