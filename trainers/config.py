"""The typed configuration of one Matryoshka training run, and the config mechanism every
component shares (trainers, sweeps and serve).

A run is described by a YAML file plus ``--key value`` overrides:

    python -m trainers.train --config trainers/configs/default.yaml --learning_rate 5e-5

Every config is a frozen pydantic model (``Config``): it converts and checks its values in
one place, and an unknown key or a bad value raises ``ConfigError`` naming the key and what
would be right, before any model is loaded. Command-line text is turned into values by one
function (``cli_value``), guided by the field's declared type.
"""

from __future__ import annotations

import functools
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic.fields import FieldInfo

from trainers.errors import ConfigError

__all__ = [
    "DEFAULT_OBJECTIVE",
    "SEED_RECIPE",
    "Config",
    "ConfigError",
    "Recipe",
    "TrainConfig",
    "cli_value",
    "describe",
    "load",
    "parse",
    "parse_overrides",
    "read_yaml_mapping",
]

C = TypeVar("C", bound="Config")
PositiveInt = Annotated[int, Field(ge=1)]

# The metric that picks the best epoch and, in a sweep, the best trial: the mean over dims.
DEFAULT_OBJECTIVE = "mean_cosine_map@100"
OBJECTIVE_PATTERN = re.compile(
    r"(mean|dim_\d+)_\w+_(map@\d+|ndcg@\d+|mrr@\d+|accuracy@\d+|recall@\d+|precision@\d+)"
)


class Config(BaseModel):
    """Base of every config: frozen, typed, and strict about unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    def replace(self: C, **changes: Any) -> C:
        """A copy with ``changes`` applied and checked (unknown keys are an error)."""
        return parse(type(self), {**self.model_dump(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (tuples as lists)."""
        return self.model_dump(mode="json")

    @classmethod
    def check_value(cls, key: str, value: Any) -> Any:
        """``value`` converted for the field ``key`` alone, or ConfigError (no config is built)."""
        if key not in cls.model_fields:
            raise ConfigError(
                f"unknown config key: {key}. Known keys: {', '.join(cls.model_fields)}"
            )
        try:
            return _field_adapter(cls, key).validate_python(value)
        except ValidationError as err:
            raise ConfigError(_describe_errors(err, cls, prefix=(key,))) from None


class Recipe(Config):
    """A hand-picked training recipe: the hyper-parameters a sweep searches."""

    learning_rate: float
    batch_size: int
    epochs: int
    matryoshka_weights: tuple[float, ...] | None = None  # None: every dim weighs 1.0


# The recipe of the published Matryoshka models (financial 10-K on bge-base, German tax law on
# bge-m3, ...): the defaults of TrainConfig, the first trial of every sweep, and the reference
# the quality benchmark measures a sweep against. Its one home.
SEED_RECIPE = Recipe(learning_rate=2e-5, batch_size=32, epochs=4)

LrScheduler = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"
]


class HardNegatives(Config):
    """Hard negatives mined with the base model before training (trainers/negatives.py):
    each training pair becomes (query, passage, negative_1, ..., negative_n), and MNRL adds the
    negatives to the in-batch ones."""

    num_negatives: Annotated[int, Field(ge=1, le=16)] = Field(1, description="negatives per pair")
    relative_margin: Annotated[float, Field(ge=0, lt=1)] | None = Field(
        0.05,
        description="drop candidates scoring within this share of the positive's score "
        "(NV-Retriever's false-negative filter; null: none)",
    )
    pool: Annotated[int, Field(ge=1)] | None = Field(
        10000,
        description="train-split passages mined among (a seeded sample; null: all); the "
        "pairs' own passages are always in it",
    )
    range_max: Annotated[int, Field(ge=2)] = Field(
        50, description="candidates considered per query (the top of the base model's ranking)"
    )


class TrainConfig(Config):
    # --- model -------------------------------------------------------------------------
    model: str = Field(
        "bundled:minilm",
        min_length=1,
        description="'bundled:minilm' (offline all-MiniLM-L6-v2), a local model folder, or a hub "
        "id such as BAAI/bge-base-en-v1.5 (only a hub id uses the network)",
    )
    query_prompt: str = Field(
        "",
        description="prompt prepended to queries in training, evaluation and serving; BGE "
        "models use 'Represent this sentence for searching relevant passages: '",
    )
    max_seq_length: PositiveInt = Field(
        128, description="tokens per text; longer texts are truncated"
    )

    # --- data --------------------------------------------------------------------------
    data: str = Field(
        "debian",
        min_length=1,
        description="'debian' (built-in Debian package descriptions), a .jsonl/.csv/.parquet "
        "file, or a Hugging Face data set id (owner/name)",
    )
    data_split: str = Field("train", description="split to read from a Hugging Face data set")
    query_column: str = Field("anchor", description="column holding the query (anchor)")
    passage_column: str = Field(
        "positive", description="column holding the relevant passage (positive)"
    )
    group_column: str | None = Field(
        None,
        description="optional column with a group id (document, package...): train and "
        "held-out sets never share a group",
    )
    max_pairs: PositiveInt | None = Field(
        None,
        description="use at most this many training pairs (seeded sample after the split); "
        "null = all",
    )
    eval_size: float = Field(
        0.1,
        gt=0,
        description="validation pairs (held out; the best epoch and trial are picked "
        "on them): a fraction (0 < x < 1) or a count (>= 1) of the pairs",
    )
    eval_max_queries: PositiveInt | None = Field(
        None,
        description="evaluate at most this many validation queries (the corpus keeps every "
        "validation passage); null = all",
    )
    test_size: float = Field(
        0,
        ge=0,
        description="test pairs, held out from training and validation for a final verdict that "
        "picks nothing: a fraction or a count; 0 = no test split",
    )
    test_max_queries: PositiveInt | None = Field(
        None, description="evaluate at most this many test queries (against every test passage)"
    )

    # --- Matryoshka loss ---------------------------------------------------------------
    matryoshka_dims: tuple[PositiveInt, ...] = Field(
        (384, 256, 128, 64),
        description="truncation dims, largest first; none above the model's dimension",
    )
    matryoshka_weights: tuple[Annotated[float, Field(ge=0)], ...] | None = Field(
        SEED_RECIPE.matryoshka_weights, description="one loss weight per dim; null = all 1.0"
    )
    loss: Literal["mnrl", "cached_mnrl"] = Field(
        "mnrl",
        description="inner loss: 'mnrl' (MultipleNegativesRankingLoss) or 'cached_mnrl' "
        "(GradCache: large batches in small memory)",
    )
    mini_batch_size: PositiveInt = Field(32, description="mini-batch size of cached_mnrl")
    hard_negatives: HardNegatives | None = Field(
        None,
        description="mine hard negatives with the base model, e.g. {num_negatives: 1, "
        "relative_margin: 0.05}; null: in-batch negatives only",
    )

    # --- optimisation ------------------------------------------------------------------
    learning_rate: float = Field(
        SEED_RECIPE.learning_rate, gt=0, lt=1, description="peak learning rate"
    )
    batch_size: PositiveInt = Field(
        SEED_RECIPE.batch_size,
        description="per-device batch size (in-batch negatives = batch_size - 1)",
    )
    gradient_accumulation_steps: PositiveInt = Field(
        1, description="steps of gradient accumulation"
    )
    epochs: PositiveInt = Field(
        SEED_RECIPE.epochs, description="training epochs; the model is evaluated after each"
    )
    warmup_ratio: float = Field(
        0.1, ge=0, lt=1, description="fraction of steps used for linear warm-up"
    )
    lr_scheduler: LrScheduler = Field("linear", description="learning-rate schedule")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    seed: int = Field(42, description="seed of the split, sampling and training")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="'auto' = fp32 on CPU; on a CUDA GPU with TF32 (Ampere and later) fp32 "
        "with TF32 matmuls for models up to 150M parameters (measured faster at MiniLM's size), "
        "bf16 above (fp16 where bf16 is unsupported)",
    )
    dataloader_workers: Annotated[int, Field(ge=0)] | None = Field(
        None,
        description="processes that tokenise the next batches while the current one "
        "trains; null = auto: 0 on a CPU (they would take the cores torch trains on), up to 4 on "
        "a CUDA GPU",
    )
    no_duplicates: bool = Field(
        True,
        description="batch sampler that keeps duplicate texts out of a batch (they would be "
        "false in-batch negatives)",
    )
    load_best_model_at_end: bool = Field(
        True, description="keep the epoch with the best objective rather than the last"
    )
    eval_batch_size: PositiveInt = Field(64, description="batch size for encoding in evaluation")
    objective: str = Field(
        DEFAULT_OBJECTIVE,
        description="metric that picks the best epoch (and, in sweeps, the best trial): "
        "'mean_cosine_map@100' (mean over dims) or one dim's, e.g. 'dim_64_cosine_map@100'",
    )

    # --- output ------------------------------------------------------------------------
    output_dir: str = Field(
        "runs/train", description="where the trained model folder and metrics.json go"
    )

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        dims = list(self.matryoshka_dims)
        if not dims:
            raise ValueError(
                "matryoshka_dims is empty: give at least one dim, e.g. [384, 256, 128, 64]"
            )
        if dims != sorted(set(dims), reverse=True):
            raise ValueError(
                f"matryoshka_dims={dims}: dims must be unique and in descending order, e.g. "
                f"{sorted(set(dims), reverse=True)}"
            )
        weights = self.matryoshka_weights
        if weights is not None:
            if len(weights) != len(dims):
                raise ValueError(
                    f"matryoshka_weights has {len(weights)} values but matryoshka_dims has "
                    f"{len(dims)}: give one weight per dim"
                )
            if not any(weights):
                raise ValueError(
                    f"matryoshka_weights={list(weights)}: weights must be >= 0 and not all zero"
                )
        for key in ("eval_size", "test_size"):
            size = getattr(self, key)
            if size >= 1 and size != int(size):
                raise ValueError(f"{key}={size}: give a fraction in (0, 1) or a whole count >= 1")
        if self.query_column == self.passage_column:
            raise ValueError(
                f"query_column and passage_column are both {self.query_column!r}: they must differ"
            )
        if not OBJECTIVE_PATTERN.fullmatch(self.objective):
            raise ValueError(
                f"objective={self.objective!r}: use 'mean_cosine_map@100' or a per-dim key such "
                "as 'dim_64_cosine_map@100'"
            )
        if self.objective.startswith("dim_") and int(self.objective.split("_")[1]) not in dims:
            raise ValueError(
                f"objective={self.objective!r} names a dim that is not in matryoshka_dims {dims}"
            )
        return self

    @property
    def weights(self) -> tuple[float, ...]:
        """The Matryoshka weights with the default (all 1.0) filled in."""
        return self.matryoshka_weights or tuple(1.0 for _ in self.matryoshka_dims)


@functools.cache
def _field_adapter(cls: type[Config], key: str) -> TypeAdapter:
    info = cls.model_fields[key]
    return TypeAdapter(
        Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    )


# --- parsing and errors --------------------------------------------------------------------


def parse(cls: type[C], values: Mapping[str, Any], where: str = "") -> C:
    """Build ``cls`` from plain values; unknown keys and bad values raise ConfigError naming them.

    ``where`` prefixes the message (e.g. ``train``, so that a sweep's error names its section).
    """
    try:
        return cls.model_validate(dict(values))
    except ValidationError as err:
        message = _describe_errors(err, cls)
        raise ConfigError(f"{where}: {message}" if where else message) from None


def _describe_errors(err: ValidationError, cls: type[BaseModel], prefix: tuple = ()) -> str:
    """One line for the first errors of ``err``, in this project's words: key=value: fix."""
    return "; ".join(_describe(error, cls, prefix) for error in err.errors()[:3])


def _describe(error: Mapping[str, Any], cls: type[BaseModel], prefix: tuple) -> str:
    loc = prefix + tuple(error["loc"])
    key = ".".join(str(p) for p in loc if not isinstance(p, int))
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "extra_forbidden":
        known = _known_keys(cls, loc[:-1])
        return f"unknown config key: {key}. Known keys: {', '.join(known)}"
    if kind == "missing":
        return f"{key} is required"
    if kind == "value_error":  # our own checks: their messages are whole sentences already
        return str(ctx.get("error", error["msg"]))
    shown = f"{key}={value!r}"
    choices = ctx.get("expected", "").replace(" or ", ", ").replace("'", "")
    fixes = {
        "literal_error": f"must be one of {choices}",
        "greater_than_equal": f"must be >= {ctx.get('ge')}",
        "greater_than": f"must be > {ctx.get('gt')}",
        "less_than": f"must be < {ctx.get('lt')}",
        "less_than_equal": f"must be <= {ctx.get('le')}",
        "int_from_float": "expected an integer",
        "int_parsing": "expected an integer",
        "int_type": "expected an integer",
        "float_parsing": "expected a number",
        "float_type": "expected a number",
        "bool_parsing": "expected true or false",
        "bool_type": "expected true or false",
        "string_type": "expected a string",
        "string_too_short": "must not be empty",
        "tuple_type": "expected a list, e.g. [384, 256, 128, 64]",
    }
    return f"{shown}: {fixes.get(kind, error['msg'])}"


def _known_keys(cls: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc:
        if isinstance(part, int):
            continue
        field = cls.model_fields.get(str(part))
        inner = _model_in(field.annotation) if field is not None else None
        if inner is None:
            return []
        cls = inner
    return list(cls.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


# --- YAML files and the command line ---------------------------------------------------------


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML config file, or ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value at the top level")
    return loaded


def load(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Load a YAML config (or the defaults when ``path`` is None) and apply overrides."""
    values = read_yaml_mapping(path) if path is not None else {}
    values.update(overrides or {})
    return parse(TrainConfig, values)


def cli_value(text: str, annotation: Any) -> Any:
    """A command-line string as the value a YAML file would hold for a field of ``annotation``.

    Strings stay as typed; everything else is read as YAML (``3e-5``, ``null``, ``[2, 1]``,
    ``true``), and a list may be written without brackets (``--matryoshka_dims 256,128``).
    """
    leaves = _leaf_types(annotation)
    if leaves <= {str}:
        return text
    if tuple in leaves and "," in text and not text.lstrip().startswith("["):
        text = f"[{text}]"
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # the config's own check names the key and the expected type
    if str in leaves and not isinstance(value, (list, dict, type(None))):
        return text  # `str | None`: 'doc' and '12' stay strings, only null is None
    if isinstance(value, str) and leaves & {int, float}:
        try:  # YAML 1.1 reads 3e-5 (no dot) as a string
            number = float(text)
        except ValueError:
            return value
        return int(number) if int in leaves and number.is_integer() else number
    return value


def _leaf_types(annotation: Any) -> set[type]:
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _leaf_types(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_leaf_types(a) for a in typing.get_args(annotation)))
    if origin is Literal:
        return {type(a) for a in typing.get_args(annotation)}
    if origin is not None:
        return {origin}
    return {annotation} if isinstance(annotation, type) else {object}


def parse_overrides(
    argv: list[str], fields: Mapping[str, FieldInfo] | None = None
) -> dict[str, Any]:
    """``['--learning_rate', '3e-5', '--epochs=2']`` -> ``{'learning_rate': 3e-05, 'epochs': 2}``.

    Dashes and underscores are the same in a key. ``fields`` are the accepted keys with their
    declared types (default: TrainConfig's); each value is converted by ``cli_value``.
    """
    fields = TrainConfig.model_fields if fields is None else fields
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
        if key not in fields:
            raise ConfigError(f"unknown config key: {key}. Known keys: {', '.join(sorted(fields))}")
        overrides[key] = cli_value(value, fields[key].annotation)
        i += 1
    return overrides


def describe(cls: type[Config] = TrainConfig, keys: Iterable[str] | None = None) -> str:
    """One entry per key with its default and help: the body of ``--help``."""
    lines = []
    for name in keys or cls.model_fields:
        info = cls.model_fields[name]
        default = info.get_default(call_default_factory=True)
        if isinstance(default, tuple):
            default = list(default)
        lines.append(f"  --{name} (default {default!r})\n      {info.description or ''}")
    return "\n".join(lines)
