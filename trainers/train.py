"""One Matryoshka fine-tuning run: baseline evaluation, training, per-epoch evaluation, save.

    python -m trainers.train                # trainers/configs/default.yaml: < 15 min on 2 CPU cores
    python -m trainers.train --config trainers/configs/default.yaml [--key value ...]
    python -m trainers.train --help        # every key, its default and its meaning

The saved folder (``output_dir``) is a plain sentence-transformers model folder, loadable with
``SentenceTransformer(output_dir)``, with a model card holding per-dim metric tables and a
``metrics.json`` holding the baseline and every epoch's metrics at every dim.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

from trainers import cli, negatives
from trainers import config as config_lib
from trainers import tasks as evaluation
from trainers.config import TrainConfig
from trainers.data import describe_fingerprint, load_split
from trainers.errors import ConfigError
from trainers.evaluator import MatryoshkaInformationRetrievalEvaluator
from trainers.models import check_dims, embedding_dim, load_model, write_matryoshka_info
from trainers.tasks import validation_task

logger = logging.getLogger(__name__)

# on_epoch(epoch, metrics, checkpoint_dir): checkpoint_dir is a full training checkpoint of
# this epoch (model, optimizer, scheduler): a sweep persists it, and resume_from takes it back.
OnEpoch = Callable[[int, dict[str, float], str | None], None]


@dataclass
class TrainResult:
    """What a run produced; also written to ``<output_dir>/metrics.json``."""

    output_dir: str
    objective: str
    baseline: dict[str, float]
    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    train_pairs: int = 0
    eval_queries: int = 0
    eval_corpus: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)  # the split's fingerprint (trainers.data)
    seconds: float = 0.0
    # Wall-clock (time.time()) of the first training step, and the seconds spent in training
    # epochs (data loading and steps, not evaluation or saving): what a benchmark of sweep
    # start-up or of throughput needs, measured where the steps happen.
    first_step_unix: float | None = None
    train_seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    negatives: dict[str, Any] | None = None  # the hard-negative mining record (negatives.py)

    @property
    def final(self) -> dict[str, float]:
        """Metrics of the saved model: the best epoch's (or the last one's)."""
        if not self.epochs:
            return self.baseline
        return self.epochs[(self.best_epoch or len(self.epochs)) - 1]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "final": self.final}


# precision: auto on a CUDA GPU with TF32 (Ampere and later). Measured on an H100
# (benchmarks/results/throughput-gpu.md): fp32 + TF32 trained MiniLM (22.7M parameters)
# 1.25x faster than bf16 at batch 32 and 2.09x at batch 128 (a small model is bound by
# per-kernel overhead, and bf16 autocast adds cast kernels). Larger models gain from bf16's
# halved activations and bandwidth (bge-m3, 568M), so bf16 is kept above a size. Where the
# two cross between 22.7M and 568M is NOT measured: 150M (above bge-base's 110M) is a guess
# until a GPU run of benchmarks/throughput.py at those sizes replaces it.
FP32_MAX_PARAMS = 150_000_000


def precision_args(precision: str, n_params: int | None = None) -> dict[str, Any]:
    """Training-argument flags for the requested precision on this machine (``n_params``:
    the model's size, which ``auto`` decides by on a GPU)."""
    import torch

    cuda = torch.cuda.is_available()
    tf32 = cuda and torch.cuda.get_device_capability()[0] >= 8
    if precision == "auto":
        if not cuda:
            precision = "fp32"
        elif tf32 and (n_params is None or n_params <= FP32_MAX_PARAMS):
            precision = "fp32"  # with TF32 matmuls
        else:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and not cuda:
        raise ConfigError("precision=fp16 needs a CUDA GPU; use fp32 (or auto) on CPU")
    args: dict[str, Any] = {"bf16": precision == "bf16", "fp16": precision == "fp16"}
    if cuda:
        # TF32 matmuls on Ampere+ and the fused AdamW kernel: free speed on GPUs.
        args["tf32"] = tf32
        args["optim"] = "adamw_torch_fused"
    else:
        args["use_cpu"] = True
    return args


def dataloader_workers(configured: int | None) -> int:
    """DataLoader worker processes: the configured count, or auto.

    On a CUDA GPU the collator's tokenisation (about 20 ms a batch of 32 pairs, measured on an
    H100 host: a third of a step) runs in the training process between steps unless workers
    do it ahead; on a CPU the workers would only take cores from torch's threads.
    """
    if configured is not None:
        return configured
    import torch

    if not torch.cuda.is_available():
        return 0
    cpus = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
    return max(0, min(4, cpus - 1))


def build_loss(model, config: TrainConfig):
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MatryoshkaLoss,
        MultipleNegativesRankingLoss,
    )

    if config.loss == "cached_mnrl":
        inner = CachedMultipleNegativesRankingLoss(model, mini_batch_size=config.mini_batch_size)
    else:
        inner = MultipleNegativesRankingLoss(model)
    return MatryoshkaLoss(
        model, inner, list(config.matryoshka_dims), matryoshka_weights=list(config.weights)
    )


def prepare(config: TrainConfig, progress: bool = True):
    """Model (dims checked), data split and evaluator of a run: everything before training.

    ``progress``: show progress bars (a sweep's trials do not: Ray relays them line by line).
    """
    model = load_model(config.model, config.max_seq_length)
    check_dims(config.matryoshka_dims, embedding_dim(model), config.model)
    if config.query_prompt:
        # Saved with the model: encode_query() and the server apply it like training did.
        model.prompts["query"] = config.query_prompt
    split = load_split(config)
    return model, split, evaluation.evaluator(validation_task(config, split), config, progress)


def evaluate_baseline(config: TrainConfig, progress: bool = True) -> dict[str, float]:
    """The untrained model's metrics on the run's held-out split (the same for every trial)."""
    model, _, evaluator = prepare(config, progress)
    return evaluator(model)


class EpochReporter(TrainerCallback):
    """Collects every epoch's metrics into the result and hands them to ``on_epoch``.

    With per-epoch saving the report waits for on_save, so the checkpoint it names exists
    (the Trainer evaluates, then saves). It also stops a run whose loss is no longer finite,
    and times the training itself: ``first_step_unix`` and ``train_seconds`` go into the result
    and into every report (the Trainer evaluates after on_epoch_end, so epochs exclude it).
    """

    def __init__(
        self,
        result: TrainResult,
        on_epoch: OnEpoch | None,
        checkpoints: Path,
        save_each_epoch: bool,
        learning_rate: float,
    ) -> None:
        self.result, self.on_epoch, self.checkpoints = result, on_epoch, checkpoints
        self.save_each_epoch, self.learning_rate = save_each_epoch, learning_rate
        self.pending: dict[str, float] | None = None
        self._epoch_began = self._last_step_end = 0.0

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._epoch_began = self._last_step_end = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        if self.result.first_step_unix is None:
            self.result.first_step_unix = time.time()

    def on_step_end(self, args, state, control, **kwargs):
        self._last_step_end = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.result.train_seconds += self._last_step_end - self._epoch_began

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise FloatingPointError(
                f"training loss is {loss} at step {state.global_step} (learning_rate="
                f"{self.learning_rate}): lower the learning rate or use precision=fp32"
            )

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        flat = {
            k.removeprefix("eval_"): v for k, v in (metrics or {}).items() if k.startswith("eval_")
        }
        self.result.epochs.append(
            {"epoch": round(state.epoch or 0), "step": state.global_step, **flat}
        )
        self.pending = flat
        if not self.save_each_epoch:
            self._report(None)

    def on_save(self, args, state, control, **kwargs):
        if self.pending is not None:
            self._report(str(self.checkpoints / f"checkpoint-{state.global_step}"))

    def _report(self, checkpoint: str | None) -> None:
        if self.on_epoch is not None and self.pending is not None:
            epoch = self.result.epochs[-1]["epoch"]
            timing = {
                "first_step_unix": self.result.first_step_unix,
                "train_seconds": self.result.train_seconds,
                "train_pairs_seen": self.result.train_pairs * epoch,
            }
            if self.result.negatives is not None:  # did this run mine, or read the cache?
                timing["negatives_from_cache"] = float(self.result.negatives["from_cache"])
            self.on_epoch(epoch, {**self.pending, **timing}, checkpoint)
        self.pending = None


def training_args(
    config: TrainConfig,
    checkpoints: Path,
    save_each_epoch: bool,
    progress: bool = True,
    n_params: int | None = None,
):
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers

    return SentenceTransformerTrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        # transformers 5 reads a float warmup_steps as the ratio (warmup_ratio is deprecated).
        warmup_steps=float(config.warmup_ratio),
        lr_scheduler_type=config.lr_scheduler,
        weight_decay=config.weight_decay,
        seed=config.seed,
        batch_sampler=BatchSamplers.NO_DUPLICATES
        if config.no_duplicates
        else BatchSamplers.BATCH_SAMPLER,
        prompts={"anchor": config.query_prompt} if config.query_prompt else None,
        eval_strategy="epoch",
        save_strategy="epoch" if save_each_epoch else "no",
        save_total_limit=1,
        load_best_model_at_end=config.load_best_model_at_end,
        metric_for_best_model=f"eval_{config.objective}",
        greater_is_better=True,
        logging_steps=10,
        report_to="none",
        disable_tqdm=not progress,
        dataloader_num_workers=dataloader_workers(config.dataloader_workers),
        **precision_args(config.precision, n_params),
    )


def train(
    config: TrainConfig,
    on_epoch: OnEpoch | None = None,
    *,
    resume_from: str | None = None,
    baseline: dict[str, float] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Fine-tune ``config.model`` with MatryoshkaLoss(MNRL) and save it to ``config.output_dir``.

    ``on_epoch(epoch, metrics, checkpoint_dir)`` is called after every epoch's evaluation with
    the flat per-dim metrics (``dim_64_cosine_map@100``...), the run's ``first_step_unix`` and
    ``train_seconds`` so far, and that epoch's checkpoint, so a sweep can report them.
    ``resume_from`` continues from such a checkpoint; ``baseline``
    skips the baseline evaluation when the caller already has it. ``progress=False`` turns
    off the progress bars and the trainer's printed logs (``on_epoch`` is the progress view).
    """
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer
    from transformers import set_seed

    started = time.perf_counter()
    set_seed(config.seed)
    model, split, evaluator = prepare(config, progress)
    if baseline is None:
        logger.info(
            "baseline evaluation: %d queries against %d passages",
            len(evaluator.queries),
            len(evaluator.corpus),
        )
        baseline = evaluator(model)
    result = TrainResult(
        output_dir=config.output_dir,
        objective=config.objective,
        baseline=baseline,
        train_pairs=len(split.train),
        eval_queries=len(evaluator.queries),
        eval_corpus=len(evaluator.corpus),
        dropped=split.dropped,
        data=split.fingerprint,
        config=config.to_dict(),
    )

    output_dir = Path(config.output_dir)
    checkpoints = output_dir / "checkpoints"
    # A sweep needs every epoch's checkpoint; a single run only to pick its best epoch.
    save_each_epoch = on_epoch is not None or config.load_best_model_at_end
    reporter = EpochReporter(result, on_epoch, checkpoints, save_each_epoch, config.learning_rate)
    # Mined with the model as loaded: the base model (a resumed run loads its checkpoint's
    # weights only in trainer.train), so every trial and the refit read the same cache entry.
    columns, result.negatives = negatives.train_rows(config, split, model)
    if result.negatives is not None:
        logger.info("hard negatives: %s", negatives.describe(result.negatives))
        result.train_pairs = len(columns["anchor"])
    train_dataset = Dataset.from_dict(columns)
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training_args(
            config,
            checkpoints,
            save_each_epoch,
            progress,
            sum(p.numel() for p in model.parameters()),
        ),
        train_dataset=train_dataset,
        loss=build_loss(model, config),
        evaluator=evaluator,
        callbacks=[reporter],
    )
    if not progress:
        # With its bars off, the HF trainer prints every log dict instead (PrinterCallback).
        trainer.remove_callback(PrinterCallback)
    trainer.train(resume_from_checkpoint=resume_from)

    if result.epochs:
        if config.load_best_model_at_end:
            values = [e.get(config.objective, float("-inf")) for e in result.epochs]
            result.best_epoch = max(range(len(values)), key=values.__getitem__) + 1
        else:
            result.best_epoch = len(result.epochs)
    _card_shows(model, evaluator, result.final)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save(str(output_dir))
    write_matryoshka_info(output_dir, config.matryoshka_dims)
    shutil.rmtree(checkpoints, ignore_errors=True)
    result.seconds = time.perf_counter() - started
    (output_dir / "metrics.json").write_text(json.dumps(result.to_json(), indent=2))
    return result


def _card_shows(
    model, evaluator: MatryoshkaInformationRetrievalEvaluator, metrics: dict[str, float]
) -> None:
    # The card's tables hold the last evaluation; with load_best_model_at_end the saved model
    # can be an earlier epoch, so point each dim's table at the saved model's own numbers.
    for view in evaluator.dim_views:
        model.model_card_data.eval_results_dict[view] = {
            k: v for k, v in metrics.items() if k.startswith(view.name + "_")
        }


def dims_of(result: TrainResult) -> list[int]:
    return [int(d) for d in result.config["matryoshka_dims"]]


def format_table(result: TrainResult, metric: str = "cosine_map@100") -> str:
    """A dim x (baseline, fine-tuned, change) table of ``metric`` in Markdown."""
    name = metric.split("_", 1)[-1].upper()
    lines = [
        f"| dim | baseline {name} | fine-tuned {name} | change |",
        "|---:|---:|---:|---:|",
    ]
    for dim in dims_of(result):
        key = f"dim_{dim}_{metric}"
        before, after = result.baseline[key], result.final[key]
        lines.append(
            f"| {dim} | {before:.4f} | {after:.4f} | {after - before:+.4f} "
            f"({(after / before - 1) * 100 if before else float('inf'):+.1f}%) |"
        )
    return "\n".join(lines)


DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"

USAGE = """usage: python -m trainers.train [--config FILE.yaml] [--key value ...]

Without --config it runs trainers/configs/default.yaml (bundled MiniLM, Debian pairs).

Fine-tune a sentence-transformers model with MatryoshkaLoss(MultipleNegativesRankingLoss)
and print baseline vs fine-tuned MAP@100 per Matryoshka dim.

examples:
  python -m trainers.train --config trainers/configs/default.yaml
  python -m trainers.train --config trainers/configs/default.yaml --epochs 2 --learning_rate 5e-5
  python -m trainers.train --data pairs.jsonl --query_column question --passage_column context

keys:
"""


def _main(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        print(USAGE + config_lib.describe())
        return 0
    config_path: str | None = str(DEFAULT_CONFIG)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ConfigError("--config needs a file")
        config_path = argv[i + 1]
        del argv[i : i + 2]
    cli.setup_logging()
    config = config_lib.load(config_path, config_lib.parse_overrides(argv))
    result = train(config)
    print()
    print(
        f"{result.train_pairs} training pairs; evaluated on {result.eval_queries} held-out queries "
        f"against {result.eval_corpus} passages; {result.seconds / 60:.1f} min"
    )
    print(format_table(result))
    print(f"\ndata: {describe_fingerprint(result.data)}")
    print(f"\nmodel: {result.output_dir}  (metrics.json and README.md model card inside)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m trainers.train`` and ``matryoshka-train``: bad config, data or model exit 2."""
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
