"""The typed configuration of one Matryoshka training run.

A run is described by a YAML file plus ``--key value`` overrides:

    python -m trainers.train --config trainers/configs/default.yaml --learning_rate 5e-5

Every field below carries a one-line help (shown by ``--help``). Unknown keys and bad values
raise ``ConfigError`` naming the key and what would be right, before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

LOSSES = ("mnrl", "cached_mnrl")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LR_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
)


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key and the fix."""


def _help(text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text}, **kwargs)


@dataclass(frozen=True)
class TrainConfig:
    # --- model -------------------------------------------------------------------------
    model: str = _help(
        "'bundled:minilm' (offline all-MiniLM-L6-v2), a local model folder, or a hub id "
        "such as BAAI/bge-base-en-v1.5 (only a hub id uses the network)",
        default="bundled:minilm",
    )
    query_prompt: str = _help(
        "prompt prepended to queries in training, evaluation and serving; BGE models use "
        "'Represent this sentence for searching relevant passages: '",
        default="",
    )
    max_seq_length: int = _help("tokens per text; longer texts are truncated", default=128)

    # --- data --------------------------------------------------------------------------
    data: str = _help(
        "'debian' (built-in Debian package descriptions), a .jsonl/.csv/.parquet file, or a "
        "Hugging Face data set id (owner/name)",
        default="debian",
    )
    data_split: str = _help("split to read from a Hugging Face data set", default="train")
    query_column: str = _help("column holding the query (anchor)", default="anchor")
    passage_column: str = _help("column holding the relevant passage (positive)", default="positive")
    group_column: str | None = _help(
        "optional column with a group id (document, package...): train and test never "
        "share a group",
        default=None,
    )
    max_pairs: int | None = _help(
        "use at most this many training pairs (seeded sample after the split); null = all",
        default=None,
    )
    eval_size: float = _help(
        "held-out pairs: a fraction (0 < x < 1) or a count (>= 1) of the pairs", default=0.1
    )
    eval_max_queries: int | None = _help(
        "evaluate at most this many held-out queries (the corpus keeps every held-out "
        "passage); null = all",
        default=None,
    )

    # --- Matryoshka loss ---------------------------------------------------------------
    matryoshka_dims: tuple[int, ...] = _help(
        "truncation dims, largest first; the first must not exceed the model's dimension",
        default=(384, 256, 128, 64),
    )
    matryoshka_weights: tuple[float, ...] | None = _help(
        "one loss weight per dim; null = all 1.0", default=None
    )
    loss: Literal["mnrl", "cached_mnrl"] = _help(
        "inner loss: 'mnrl' (MultipleNegativesRankingLoss) or 'cached_mnrl' (GradCache: "
        "large batches in small memory)",
        default="mnrl",
    )
    mini_batch_size: int = _help("mini-batch size of cached_mnrl", default=32)

    # --- optimisation ------------------------------------------------------------------
    learning_rate: float = _help("peak learning rate", default=2e-5)
    batch_size: int = _help("per-device batch size (in-batch negatives = batch_size - 1)", default=32)
    gradient_accumulation_steps: int = _help("steps of gradient accumulation", default=1)
    epochs: int = _help("training epochs; the model is evaluated after each", default=1)
    warmup_ratio: float = _help("fraction of steps used for linear warm-up", default=0.1)
    lr_scheduler: str = _help(f"learning-rate schedule: one of {', '.join(LR_SCHEDULERS)}", default="linear")
    weight_decay: float = _help("AdamW weight decay", default=0.01)
    seed: int = _help("seed of the split, sampling and training", default=42)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = _help(
        "'auto' = bf16 + tf32 on CUDA GPUs that support it, fp32 on CPU", default="auto"
    )
    dataloader_workers: int | None = _help(
        "processes that tokenise the next batches while the current one trains; null = auto: "
        "0 on a CPU (they would take the cores torch trains on), up to 4 on a CUDA GPU",
        default=None,
    )
    no_duplicates: bool = _help(
        "batch sampler that keeps duplicate texts out of a batch (they would be false "
        "in-batch negatives)",
        default=True,
    )
    load_best_model_at_end: bool = _help(
        "keep the epoch with the best objective rather than the last", default=True
    )
    eval_batch_size: int = _help("batch size for encoding in evaluation", default=64)
    objective: str = _help(
        "metric that picks the best epoch (and, in sweeps, the best trial): "
        "'mean_cosine_map@100' (mean over dims) or one dim's, e.g. 'dim_64_cosine_map@100'",
        default="mean_cosine_map@100",
    )

    # --- output ------------------------------------------------------------------------
    output_dir: str = _help("where the trained model folder and metrics.json go", default="runs/train")

    def __post_init__(self) -> None:
        # Convert (YAML gives lists, the CLI gives strings) and check in one place.
        for name, tp in _hints().items():
            object.__setattr__(self, name, _convert(name, getattr(self, name), tp))
        self._check()

    def _check(self) -> None:
        dims = self.matryoshka_dims
        if not dims:
            raise ConfigError("matryoshka_dims is empty: give at least one dim, e.g. [384, 256, 128, 64]")
        if any(d < 1 for d in dims):
            raise ConfigError(f"matryoshka_dims={list(dims)}: every dim must be >= 1")
        if list(dims) != sorted(set(dims), reverse=True):
            raise ConfigError(
                f"matryoshka_dims={list(dims)}: dims must be unique and in descending order, "
                f"e.g. {sorted(set(dims), reverse=True)}"
            )
        if self.matryoshka_weights is not None:
            if len(self.matryoshka_weights) != len(dims):
                raise ConfigError(
                    f"matryoshka_weights has {len(self.matryoshka_weights)} values but "
                    f"matryoshka_dims has {len(dims)}: give one weight per dim"
                )
            if any(w < 0 for w in self.matryoshka_weights) or not any(self.matryoshka_weights):
                raise ConfigError(
                    f"matryoshka_weights={list(self.matryoshka_weights)}: weights must be >= 0 "
                    "and not all zero"
                )
        _positive(self, "max_seq_length", "batch_size", "gradient_accumulation_steps", "epochs",
                  "mini_batch_size", "eval_batch_size")
        if self.learning_rate <= 0 or self.learning_rate >= 1:
            raise ConfigError(f"learning_rate={self.learning_rate}: must be in (0, 1), e.g. 2e-5")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio={self.warmup_ratio}: must be in [0, 1)")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay={self.weight_decay}: must be >= 0")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ConfigError(f"lr_scheduler={self.lr_scheduler!r}: must be one of {', '.join(LR_SCHEDULERS)}")
        if self.eval_size <= 0 or (self.eval_size >= 1 and self.eval_size != int(self.eval_size)):
            raise ConfigError(
                f"eval_size={self.eval_size}: give a fraction in (0, 1) or a whole count >= 1"
            )
        if self.dataloader_workers is not None and self.dataloader_workers < 0:
            raise ConfigError(f"dataloader_workers={self.dataloader_workers}: must be >= 0, or null for auto")
        for key in ("max_pairs", "eval_max_queries"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{key}={value}: must be >= 1, or null for no limit")
        if self.query_column == self.passage_column:
            raise ConfigError(
                f"query_column and passage_column are both {self.query_column!r}: they must differ"
            )
        if not re.fullmatch(r"(mean|dim_\d+)_\w+_(map@\d+|ndcg@\d+|mrr@\d+|accuracy@\d+|recall@\d+|precision@\d+)", self.objective):
            raise ConfigError(
                f"objective={self.objective!r}: use 'mean_cosine_map@100' or a per-dim key such as "
                "'dim_64_cosine_map@100'"
            )
        if self.objective.startswith("dim_") and int(self.objective.split("_")[1]) not in dims:
            raise ConfigError(
                f"objective={self.objective!r} names a dim that is not in matryoshka_dims {list(dims)}"
            )
        if not self.model:
            raise ConfigError("model is empty: use 'bundled:minilm', a folder, or a hub id")
        if not self.data:
            raise ConfigError("data is empty: use 'debian', a .jsonl/.csv/.parquet file, or a hub id")

    @property
    def weights(self) -> tuple[float, ...]:
        """The Matryoshka weights with the default (all 1.0) filled in."""
        return self.matryoshka_weights or tuple(1.0 for _ in self.matryoshka_dims)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied and checked (unknown keys are an error)."""
        return from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out


def _positive(config: TrainConfig, *keys: str) -> None:
    for key in keys:
        value = getattr(config, key)
        if value < 1:
            raise ConfigError(f"{key}={value}: must be >= 1")


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}


@functools.cache
def _hints() -> dict[str, Any]:
    # `from __future__ import annotations` leaves field types as strings: resolve them once.
    return typing.get_type_hints(TrainConfig)


def _convert(key: str, value: Any, tp: Any) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to the declared type ``tp``, or raise."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _convert(key, value, inner[0])
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}={value!r}: must be one of {', '.join(map(str, args))}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = yaml.safe_load(value if value.strip().startswith("[") else f"[{value}]")
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r}: expected a list, e.g. [384, 256, 128, 64]")
        return tuple(_convert(key, v, args[0]) for v in value)
    if value is None:
        raise ConfigError(f"{key} is null: it needs a value of type {getattr(tp, '__name__', tp)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}={value!r}: expected true or false")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected a number")
        try:
            number = float(value) if isinstance(value, str) else value
            if tp is int:
                if float(number) != int(float(number)):
                    raise ValueError
                return int(float(number))
            return float(number)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r}: expected {'an integer' if tp is int else 'a number'}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected a string")
        return str(value)
    return value


def from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build a config from plain values; unknown keys raise ConfigError naming them."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ConfigError(
            f"unknown config key(s): {', '.join(unknown)}. Known keys: {', '.join(FIELDS)}"
        )
    return TrainConfig(**values)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML config file, or ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value at the top level")
    return loaded


def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Load a YAML config (or the defaults when ``path`` is None) and apply overrides."""
    values = read_yaml_mapping(path) if path is not None else {}
    values.update(overrides or {})
    return from_dict(values)


def parse_overrides(argv: list[str], known: Iterable[str] | None = None) -> dict[str, Any]:
    """Turn ``['--learning_rate', '3e-5', '--epochs=2']`` into a dict (dashes == underscores).

    ``known`` is the set of accepted keys (default: this config's keys).
    """
    known = set(FIELDS if known is None else known)
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: overrides look like --key value")
        key, sep, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if not sep:
            if i + 1 >= len(argv):
                raise ConfigError(f"--{key} needs a value")
            i += 1
            value = argv[i]
        if key not in known:
            raise ConfigError(f"unknown config key: {key}. Known keys: {', '.join(sorted(known))}")
        overrides[key] = value
        i += 1
    return overrides


def describe() -> str:
    """One line per key with its default and help: the body of ``--help``."""
    lines = []
    for name, f in FIELDS.items():
        default = f.default if f.default is not dataclasses.MISSING else None
        if isinstance(default, tuple):
            default = list(default)
        lines.append(f"  --{name} (default {default!r})\n      {f.metadata['help']}")
    return "\n".join(lines)
