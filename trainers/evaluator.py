"""Matryoshka retrieval evaluation: encode once at full dim, score every truncation dim.

sentence-transformers' recipe (a SequentialEvaluator of one InformationRetrievalEvaluator per
dim) encodes queries and corpus again for every dim. Truncation is a slice of the full
embedding (``SentenceTransformer.encode(truncate_dim=d)`` slices too), so encoding once and
slicing gives the same numbers at a fraction of the cost; tests/trainers/test_evaluator.py
proves equality to 1e-6 and benchmarks/eval_speed.py measures the speed-up.

The metric code is sentence-transformers' own (this class subclasses their evaluator), and
keys follow their Matryoshka examples: ``dim_64_cosine_map@100``, ``dim_64_cosine_ndcg@10``...
plus ``mean_cosine_map@100`` (etc.), the mean over dims, used as the default objective.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sentence_transformers.base.evaluation import BaseEvaluator
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
from torch import Tensor

from trainers.models import check_dims

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

MEAN_METRICS = ("map@100", "ndcg@10", "mrr@10")


class MatryoshkaInformationRetrievalEvaluator(InformationRetrievalEvaluator):
    """IR metrics at every Matryoshka dim from a single full-dim encode.

    Args mirror InformationRetrievalEvaluator, plus ``matryoshka_dims`` (largest first) and
    ``primary`` (the key of the main score: ``mean_cosine_map@100`` by default, or one dim's,
    e.g. ``dim_64_cosine_map@100``).
    """

    def __init__(
        self,
        queries: dict[str, str],
        corpus: dict[str, str],
        relevant_docs: dict[str, set[str]],
        matryoshka_dims: Sequence[int],
        primary: str = "mean_cosine_map@100",
        **kwargs: Any,
    ) -> None:
        if kwargs.get("truncate_dim") is not None:
            raise ValueError("truncate_dim is per dim here: pass matryoshka_dims instead")
        if not queries or not corpus:
            # An empty split (test_size: 0, then scoring split.test) would otherwise fail deep in
            # the scoring with an IndexError that names nothing.
            raise ValueError(
                f"nothing to evaluate: {len(queries)} queries and {len(corpus)} corpus texts; "
                "is the split you score empty (eval_size / test_size)?"
            )
        kwargs.setdefault("write_csv", False)
        super().__init__(queries, corpus, relevant_docs, **kwargs)
        self.matryoshka_dims = [int(d) for d in matryoshka_dims]
        if not self.matryoshka_dims:
            raise ValueError("matryoshka_dims is empty: give at least one dim")
        self.primary = primary
        self._query_embeddings: Tensor | None = None
        # One light view per dim, so the model card shows one column per dim (dim_384, ...)
        # and its training log shows MAP@100 per dim, as the published seed models' cards do.
        self.dim_views = [MatryoshkaDimView(self, dim) for dim in self.matryoshka_dims]

    def __call__(
        self,
        model: SentenceTransformer,
        output_path: str | None = None,
        epoch: int = -1,
        steps: int = -1,
        *args: Any,
        **kwargs: Any,
    ) -> dict[str, float]:
        if self._score_functions_from_model:
            self.score_functions = self._model_score_functions(model)
            self.score_function_names = sorted(self.score_functions)
        model_dim = model.get_embedding_dimension()
        if model_dim is not None:
            check_dims(self.matryoshka_dims, model_dim, "the evaluated model")

        queries, corpus = self.encode_full(model)
        return self.prefix_name_to_metrics(
            self._score(model, queries, corpus, epoch, steps, card=True), self.name
        )

    def score_embeddings(self, model: SentenceTransformer, queries, corpus) -> dict[str, float]:
        """The metrics of embeddings made elsewhere (another backend of ``model``): one row
        per query and per corpus text, in this evaluator's order, at full dim."""
        import torch

        def tensor(x):
            return torch.as_tensor(x) if not isinstance(x, torch.Tensor) else x

        if self._score_functions_from_model:
            self.score_functions = self._model_score_functions(model)
            self.score_function_names = sorted(self.score_functions)
        return self._score(model, tensor(queries), tensor(corpus), card=False)

    def encode_full(self, model: SentenceTransformer):
        """Queries and corpus at full dim, once, with their prompts: what every dim slices."""
        queries = self.embed_inputs(
            model,
            self.queries,
            encode_fn_name="query",
            prompt_name=self.query_prompt_name,
            prompt=self.query_prompt,
        )
        corpus = self.embed_inputs(
            model,
            self.corpus,
            encode_fn_name="document",
            prompt_name=self.corpus_prompt_name,
            prompt=self.corpus_prompt,
        )
        return queries, corpus

    def average_precision(self, model: SentenceTransformer, k: int = 100) -> dict[int, Any]:
        """Each query's AP@k at every dim, from one encode: {dim: array in ``queries_ids``
        order}, whose mean is the ``dim_<d>_cosine_map@<k>`` metric (a test holds them equal).
        What a paired bootstrap over queries resamples (trainers.tasks.paired_bootstrap)."""
        import numpy as np
        import torch
        from sentence_transformers.util import cos_sim

        queries, corpus = (torch.as_tensor(x).float() for x in self.encode_full(model))
        position = {cid: i for i, cid in enumerate(self.corpus_ids)}
        relevant = [{position[c] for c in self.relevant_docs[q]} for q in self.queries_ids]
        # Ties (passages that encode alike, e.g. the same first max_seq_length tokens) break
        # as sentence-transformers breaks them, by ascending corpus id: else a tied relevant
        # passage's rank, and MAP, would depend on how the sort happened to order it.
        id_order = np.empty(len(self.corpus_ids), dtype=np.int64)
        id_order[np.argsort(np.array(self.corpus_ids, dtype=object), kind="stable")] = np.arange(
            len(self.corpus_ids)
        )
        result = {}
        for dim in self.matryoshka_dims:
            scores = cos_sim(queries[:, :dim], corpus[:, :dim]).numpy()
            values = np.zeros(len(relevant))
            for row, wanted in enumerate(relevant):
                hits = np.lexsort((id_order, -scores[row]))[:k]
                found, total = 0, 0.0
                for rank, hit in enumerate(hits):
                    if hit in wanted:
                        found += 1
                        total += found / (rank + 1)
                values[row] = total / min(k, len(wanted))
            result[dim] = values
        return result

    def _score(self, model, queries, corpus, epoch=-1, steps=-1, card=True) -> dict[str, float]:
        metrics: dict[str, float] = {}
        try:
            for dim, view in zip(self.matryoshka_dims, self.dim_views, strict=True):
                # The score functions (cosine) normalise, so a slice is all that truncation needs.
                self._query_embeddings = queries[:, :dim]
                scores = self.compute_all_metrics(model, corpus_embeddings=corpus[:, :dim])
                dim_metrics = {
                    f"dim_{dim}_{fn}_{name.replace('@k', '@' + str(k))}": float(value)
                    for fn, by_name in scores.items()
                    for name, by_k in by_name.items()
                    for k, value in by_k.items()
                }
                if card:
                    view.store_metrics_in_model_card_data(model, dim_metrics, epoch, steps)
                metrics.update(dim_metrics)
        finally:
            self._query_embeddings = None

        for fn in self.score_function_names:
            for name in MEAN_METRICS:
                values = [
                    metrics[f"dim_{d}_{fn}_{name}"]
                    for d in self.matryoshka_dims
                    if f"dim_{d}_{fn}_{name}" in metrics
                ]
                if values:
                    metrics[f"mean_{fn}_{name}"] = sum(values) / len(values)
        if self.primary not in metrics:
            raise ValueError(
                f"objective {self.primary!r} is not among the metrics of this model; e.g. "
                f"{', '.join(k for k in metrics if k.startswith('mean_'))}"
            )
        self.primary_metric = self.primary
        return metrics

    def embed_inputs(
        self, model, sentences, encode_fn_name=None, prompt_name=None, prompt=None, **kwargs
    ):
        # compute_all_metrics embeds the queries itself; hand it the slice of the one encode.
        if encode_fn_name == "query" and self._query_embeddings is not None:
            return self._query_embeddings
        return super().embed_inputs(model, sentences, encode_fn_name, prompt_name, prompt, **kwargs)

    def get_config_dict(self) -> dict[str, Any]:
        return {**super().get_config_dict(), "matryoshka_dims": self.matryoshka_dims}


class MatryoshkaDimView(BaseEvaluator):
    """The model card's stand-in for 'the IR evaluator at one dim' (holds no data)."""

    def __init__(self, parent: MatryoshkaInformationRetrievalEvaluator, dim: int) -> None:
        super().__init__()
        self.parent = parent
        self.name = f"dim_{dim}"
        self.primary_metric = f"{self.name}_cosine_map@100"

    def store_metrics_in_model_card_data(self, model, metrics, epoch=0, step=0) -> None:
        fn = self.parent.score_function_names[0]
        self.primary_metric = f"{self.name}_{fn}_map@100"
        super().store_metrics_in_model_card_data(model, metrics, epoch, step)

    @property
    def description(self) -> str:
        return "Information Retrieval"

    def get_config_dict(self) -> dict[str, Any]:
        # Same config for every dim, so the card groups the dims into one table.
        return InformationRetrievalEvaluator.get_config_dict(self.parent)
