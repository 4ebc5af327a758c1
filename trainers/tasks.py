"""Retrieval tasks and their evaluation, at every Matryoshka dim, with trainers' evaluator.

A ``Task`` is queries, a corpus and relevance judgements. A run has a validation task (the
best epoch and the best trial are picked on it) and, with ``test_size``, a test task (the
final verdict: it picks nothing). A guard task is any pairs set out of the training domain
(``pairs_task``), for checking what fine-tuning cost the base model elsewhere.

    task = test_task(config)
    metrics = evaluate(model, task, config)        # {"dim_64_cosine_map@100": ..., ...}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from trainers.config import TrainConfig
from trainers.data import PairsSource, Split, ir_task, load_pairs, load_split, sample
from trainers.errors import DataError
from trainers.evaluator import MatryoshkaInformationRetrievalEvaluator

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


@dataclass(frozen=True)
class Task:
    """An information-retrieval task: what the evaluator scores a model on."""

    name: str
    queries: dict[str, str]
    corpus: dict[str, str]
    relevant: dict[str, set[str]]

    def describe(self) -> str:
        return f"{len(self.queries)} queries against {len(self.corpus)} passages"


def validation_task(config: TrainConfig, split: Split | None = None) -> Task:
    split = split or load_split(config)
    return Task("validation", *ir_task(split.validation, config.eval_max_queries, config.seed))


def test_task(config: TrainConfig, split: Split | None = None) -> Task:
    split = split or load_split(config)
    if not split.test:
        raise DataError("no test split: set test_size (e.g. 10000 pairs, or 0.1)")
    return Task("test", *ir_task(split.test, config.test_max_queries, config.seed))


def pairs_task(
    source: PairsSource, max_pairs: int | None, max_queries: int | None, seed: int
) -> Task:
    """A task from a whole pairs set (a guard set): a seeded sample of ``max_pairs`` pairs."""
    pairs, _ = load_pairs(source)
    if len(pairs) < 4:
        raise DataError(f"{source.data} has {len(pairs)} usable pairs: a task needs at least 4")
    if max_pairs is not None and len(pairs) > max_pairs:
        pairs = sample(pairs, max_pairs, seed)
    return Task(source.data, *ir_task(pairs, max_queries, seed))


def evaluator(task: Task, config: TrainConfig, progress: bool = False):
    """trainers' encode-once evaluator for ``task`` at the config's dims and objective."""
    return MatryoshkaInformationRetrievalEvaluator(
        task.queries,
        task.corpus,
        task.relevant,
        matryoshka_dims=config.matryoshka_dims,
        primary=config.objective,
        batch_size=config.eval_batch_size,
        show_progress_bar=progress,
    )


def evaluate(model: SentenceTransformer, task: Task, config: TrainConfig) -> dict[str, float]:
    """``model``'s metrics on ``task`` at every dim: {"dim_64_cosine_map@100": ..., ...}."""
    return evaluator(task, config)(model)


def evaluate_cached(
    model: SentenceTransformer, task: Task, config: TrainConfig
) -> dict[str, float]:
    """``evaluate``, remembered on disk by what decides the result: the model's weights (a hash
    of every tensor), the task's queries, passages and judgements, the dims and the sequence
    length. For the base model, whose scores on a given split are the same in every run: a
    sweep's test split alone is 11,000 encodes on CPU. ``MATRYOSHKA_CACHE``/scores/."""
    import hashlib
    import json

    from trainers.debian import cache_dir, write_cache_text
    from trainers.models import weights_digest

    digest = hashlib.sha256(weights_digest(model).encode())
    what = [task.queries, task.corpus, {q: sorted(r) for q, r in task.relevant.items()}]
    what += [list(config.matryoshka_dims), model.max_seq_length, config.objective]
    digest.update(json.dumps(what, sort_keys=True).encode())
    path = cache_dir() / "scores" / f"{digest.hexdigest()[:32]}.json"
    if path.is_file():
        return json.loads(path.read_text())
    metrics = evaluate(model, task, config)
    write_cache_text(path, json.dumps(metrics))
    return metrics


def paired_bootstrap(
    a, b, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """The mean of ``a - b`` (per-query values of two models on the same queries, in the same
    order) and its ``level`` percentile interval from ``resamples`` seeded resamples of the
    queries: (difference, low, high). Paired, so what both models find hard cancels out."""
    import numpy as np

    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if diff.ndim != 1 or not len(diff):
        raise ValueError(f"need two equal-length, non-empty per-query arrays, got {diff.shape}")
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(diff.mean()), float(low), float(high)
