"""The typed configuration of a sweep, parsed once from YAML and checked before Ray starts.

    name: local
    train: {...}                  # fixed trainers keys (see `python -m trainers.train --help`)
    search:                       # what Optuna samples, per trainers key
      learning_rate: {loguniform: [1.0e-5, 2.0e-4]}
      batch_size: {choice: [16, 32]}
      epochs: {randint: [1, 3]}           # inclusive
      matryoshka_weights: {uniform: [0.5, 2.0]}   # one weight per dim
    seed_recipe: true             # evaluate lr 2e-5, batch 32, 4 epochs, weights 1 first
    points_to_evaluate: [...]     # further first points

``load`` turns that into a ``SweepConfig`` made of typed parts: the base ``TrainConfig`` (built
once), the searched ``Param``s, the first points in sampled-key form and the objective. That
object goes to the Ray trials as it is. Every error names the key and what would be right.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from sweeps.space import DISTRIBUTIONS, Param
from trainers import config as config_lib
from trainers.config import DEFAULT_OBJECTIVE, SEED_RECIPE, Config, ConfigError, TrainConfig

# Keys a sweep may search; the rest of TrainConfig is fixed per sweep (under `train:`).
# matryoshka_weights searches one weight per dim; matryoshka_weight_profile ties them to one
# number (see profile_weights), for small budgets.
SEARCHABLE = {
    "learning_rate",
    "batch_size",
    "epochs",
    "matryoshka_weights",
    "matryoshka_weight_profile",
    "warmup_ratio",
    "loss",
    "weight_decay",
    "lr_scheduler",
    "gradient_accumulation_steps",
    "mini_batch_size",
}
Point = dict[str, float | int | str]
Sampler = Literal["auto", "tpe", "gp", "qmc", "random"]


def profile_weights(dims: tuple[int, ...], gamma: float) -> tuple[float, ...]:
    """One loss weight per dim from one number: ``(largest dim / dim) ** gamma``, scaled to a
    mean of 1 (so the effective learning rate stays comparable). gamma = 0 weighs every dim
    alike (the seed recipe); gamma > 0 weighs the small dims more, gamma < 0 the large ones."""
    raw = [(dims[0] / d) ** gamma for d in dims]
    mean = sum(raw) / len(raw)
    return tuple(w / mean for w in raw)


class RefitConfig(Config):
    """After the search, the best configuration trained once more on a larger budget."""

    max_pairs: Annotated[int, Field(ge=1)] | None = Field(
        None, description="training pairs of the refit; null = the whole train split"
    )


class QuantizationConfig(Config):
    """Output precisions (int8, uint8, binary, ubinary) gated per dim at export, and the
    recommended dim (trainers/precision.py)."""

    tolerance: float = Field(
        0.01,
        ge=0,
        description="MAP@100 a precision may lose against torch float32 at a dim to be served "
        "there",
    )
    recommend_within: float = Field(
        0.01,
        ge=0,
        description="the recommended (dim, precision): the fewest bytes per vector within this "
        "MAP@100 of full-dim float32 on validation",
    )
    calibration_passages: Annotated[int, Field(ge=2)] = Field(
        1000, description="training passages the int8 ranges are calibrated on"
    )


class GuardSource(Config):
    """One out-of-domain pairs set of the guard: a built-in name, a pairs file or a hub id."""

    data: str = Field(
        description="built in: wordnet, python-docstrings, unix-faqs, vim-faq (trainers/"
        "docsets.py); or a .jsonl/.csv/.parquet pairs file, or a hub id"
    )
    data_split: str = Field("train", description="split to read from a Hugging Face data set")
    query_column: str = Field("anchor", description="column holding the query")
    passage_column: str = Field("positive", description="column holding the relevant passage")
    group_column: str | None = Field(None, description="optional group id column")
    max_pairs: Annotated[int, Field(ge=4)] | None = Field(
        1000, description="pairs drawn (seeded) for its task: the corpus"
    )
    max_queries: Annotated[int, Field(ge=1)] | None = Field(
        300, description="queries drawn from them"
    )

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        # `choose: [wordnet, unix-faqs]` is short for [{data: wordnet}, {data: unix-faqs}].
        return {"data": value} if isinstance(value, str) else value


def _sources(*names: str) -> tuple[GuardSource, ...]:
    return tuple(GuardSource(data=name) for name in names)


class GuardConfig(Config):
    """Data sets out of the training domain: what fine-tuning must not cost the base model.

    Two roles, as validation and test have. The ``choose`` sources decide: the exported model is
    mixed with the base in weight space (WiSE-FT), with the factor in ``mix`` that has the best
    validation objective among those that keep every choosing source within ``tolerance`` of the
    base at every dim. The ``verify`` sources decide nothing: they are scored on the base and
    the exported model once the choice is made, and the report says the guard held only if
    they held. A source must not serve in both roles.
    """

    choose: tuple[GuardSource, ...] = Field(
        _sources("wordnet", "python-docstrings", "vim-faq"),
        min_length=1,
        description="sources the mixing factor is chosen on",
    )
    verify: tuple[GuardSource, ...] = Field(
        _sources("unix-faqs"), description="sources only reported (they choose nothing)"
    )
    tolerance: float = Field(
        0.01, ge=0, description="MAP@100 the exported model may lose against the base, any dim"
    )
    mix: tuple[Annotated[float, Field(gt=0, le=1)], ...] = Field(
        (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
        description="WiSE-FT factors tried (share of the fine-tuned weights; 1 = as trained)",
    )

    @model_validator(mode="before")
    @classmethod
    def _old_form(cls, value: Any) -> Any:
        if isinstance(value, Mapping) and "data" in value:
            raise ValueError(
                f"guard: {{data: {value['data']}}} is the old one-set form: write guard: "
                f"{{choose: [{value['data']}]}} (see sweeps/configs/local.yaml)"
            )
        if isinstance(value, Mapping) and "choose" in value and "verify" not in value:
            # A default verifying source named among one's own choosing ones moves there.
            named = {s if isinstance(s, str) else s.get("data") for s in value["choose"] or ()}
            default = cls.model_fields["verify"].default
            value = {**value, "verify": [s for s in default if s.data not in named]}
        return value

    @model_validator(mode="after")
    def _one_role_each(self) -> GuardConfig:
        both = {s.data for s in self.choose} & {s.data for s in self.verify}
        if both:
            raise ValueError(
                f"{sorted(both)} both choose and verify: a verifying source must not take part "
                "in the choice; move it to one of the two lists"
            )
        return self


class SweepConfig(Config):
    name: str = Field(
        "local", pattern=r"^[^/]+$", description="sweep name: runs/<name>/, the W&B group"
    )
    train: TrainConfig = Field(description="the base trainers config: every fixed key")
    search: tuple[Param, ...] = Field(
        (),
        description="sampled keys (one weight_<dim> per Matryoshka dim, or weight_profile); "
        "epochs is the budget, not sampled (see epochs)",
    )
    epochs: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] = Field(
        (1, 1),
        description="(fewest, most) epochs: every trial trains the most (its learning-rate "
        "schedule spans them, so trials compared at an epoch are at the same phase) and keeps "
        "its best epoch at or above the fewest",
    )
    seed_epochs: Annotated[int, Field(ge=1)] | None = Field(
        None, description="epochs of the seed recipe's trial (its own schedule); None: no seed"
    )
    seed_recipe: bool = Field(True, description="evaluate the seed recipe as the first trial")
    first_points: tuple[Point, ...] = Field(
        (),
        description="points Optuna evaluates first, in sampled-key form: the seed recipe, then "
        "points_to_evaluate",
    )
    num_samples: Annotated[int, Field(ge=1)] = Field(
        6, description="trials in all (first points included)"
    )
    max_concurrent_trials: Annotated[int, Field(ge=1)] = Field(
        2, description="trials running at once"
    )
    cpus_per_trial: float = Field(1.0, gt=0, description="CPUs reserved per trial")
    gpus_per_trial: float = Field(
        0.0,
        ge=0,
        description="GPUs per trial; a fraction packs several trials on one GPU (0.25: four), "
        "each capped to that share of its memory",
    )
    reuse_actors: bool = Field(
        True, description="run trial after trial in the same processes (no start-up per trial)"
    )
    objective: str = Field(
        DEFAULT_OBJECTIVE,
        description="maximised metric: mean over dims, or one dim's (dim_64_cosine_map@100)",
    )
    grace_period: Annotated[int, Field(ge=1)] = Field(
        1, description="ASHA: epochs before a trial can be stopped"
    )
    reduction_factor: Annotated[int, Field(ge=2)] = Field(
        2, description="ASHA: keep 1/reduction_factor per rung"
    )
    seed: int = Field(42, description="Optuna sampler seed")
    storage_path: str = Field(
        "runs", description="where runs/<name>/ lives: a local folder, or s3://... on a cluster"
    )
    checkpoints_to_keep: Annotated[int, Field(ge=1, le=2)] = Field(
        1,
        description="best checkpoints kept per trial, besides its latest (1-2: checkpoints fill "
        "disks). Tune saves the sweep's state after this many checkpoints of a trial; at 2 a hard "
        "kill could leave a state whose latest checkpoint was deleted, and --resume fail on it",
    )
    max_failures: Annotated[int, Field(ge=0)] = Field(
        0, description="retries of a trial whose worker died"
    )
    wandb_project: str = Field("matryoshka-sweeps", description="W&B project")
    wandb: bool = Field(True, description="log to W&B (offline files without WANDB_API_KEY)")
    wandb_sweep_id: str | None = Field(
        None, description="a W&B Sweep for the runs to join (default: a new one when online)"
    )
    sampler: Sampler = Field(
        "auto",
        description="Optuna sampler: tpe, gp (Gaussian process), qmc (Sobol), random; auto "
        "picks one from the number of sampled trials and searched keys (sweeps/sampler.py)",
    )
    refit: RefitConfig | None = Field(
        RefitConfig(), description="retrain the best configuration on a larger budget; null = no"
    )
    guard: GuardConfig | None = Field(
        None, description="an out-of-domain data set the exported model must not get worse on"
    )
    onnx: bool = Field(
        True,
        description="export ONNX Runtime backends (fp32, int8) with the model and gate them per "
        "dim on the validation split",
    )
    onnx_tolerance: float = Field(
        0.005, ge=0, description="MAP@100 a backend may lose against torch fp32 at any dim"
    )
    quantization: QuantizationConfig = Field(
        QuantizationConfig(),
        description="int8/binary output gated per dim, and the recommended dim",
    )

    @property
    def dims(self) -> tuple[int, ...]:
        return self.train.matryoshka_dims

    @property
    def max_epochs(self) -> int:
        """The budget: epochs every trial's schedule spans (the seed recipe's trial aside)."""
        return self.epochs[1]

    def is_seed(self, sampled: Mapping[str, Any]) -> bool:
        return self.seed_epochs is not None and dict(sampled) == dict(self.first_points[0])

    def trial_config(
        self,
        sampled: Mapping[str, Any],
        output_dir: str | None = None,
        epochs: int | None = None,
        **overrides: Any,
    ) -> TrainConfig:
        """The trainers config of one trial: the base config plus what Optuna sampled, trained
        for ``epochs`` (default: the budget; the seed recipe's trial: its own epochs), with
        ``overrides`` of any other trainers key."""
        changes: dict[str, Any] = {k: v for k, v in sampled.items() if not k.startswith("weight_")}
        weights = {
            int(k.split("_")[1]): v
            for k, v in sampled.items()
            if k.startswith("weight_") and k != "weight_profile"
        }
        if weights:
            changes["matryoshka_weights"] = [float(weights[d]) for d in self.dims]
        if "weight_profile" in sampled:
            changes["matryoshka_weights"] = profile_weights(
                self.dims, float(sampled["weight_profile"])
            )
        if epochs is None:
            epochs = self.seed_epochs if self.is_seed(sampled) else self.max_epochs
        changes["epochs"] = epochs
        if output_dir is not None:
            changes["output_dir"] = output_dir
        changes.update(overrides)
        try:
            return self.train.replace(**changes)
        except ConfigError as err:
            raise ConfigError(f"trial: {err}") from None


# The YAML's keys: the scalar fields, train/search as mappings, and the raw first points.
YAML_KEYS = (set(SweepConfig.model_fields) - {"first_points", "epochs", "seed_epochs"}) | {
    "points_to_evaluate"
}
# What a `--key value` on the command line may set at the sweep level.
CLI_FIELDS = {
    k: f
    for k, f in SweepConfig.model_fields.items()
    if k not in ("train", "search", "first_points", "epochs", "seed_epochs")
}


def parse(raw: Mapping[str, Any]) -> SweepConfig:
    """A SweepConfig from the YAML's plain values: all checked, the TrainConfig built once."""
    unknown = sorted(set(raw) - YAML_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown sweep config key(s): {', '.join(unknown)}. Known keys: "
            f"{', '.join(sorted(YAML_KEYS))}"
        )
    values = dict(raw)
    train_raw = _mapping(values.pop("train", None), "train")
    search_raw = _mapping(values.pop("search", None), "search")
    overlap = sorted(set(search_raw) & set(train_raw))
    if overlap:
        raise ConfigError(f"{overlap} are both fixed (train:) and searched (search:): keep one")
    weights = {"matryoshka_weights", "matryoshka_weight_profile"}
    if weights <= set(search_raw) | set(train_raw) and "matryoshka_weight_profile" in search_raw:
        raise ConfigError(
            "matryoshka_weights and matryoshka_weight_profile both set: search one of them"
        )
    objective = values.get("objective", DEFAULT_OBJECTIVE)
    train = config_lib.parse(TrainConfig, {**train_raw, "objective": objective}, where="train")
    params = parse_search(search_raw, train)
    epochs = epoch_range(search_raw.get("epochs"), train)
    seed_recipe = SweepConfig.check_value("seed_recipe", values.get("seed_recipe", True))
    searched_epochs = epochs if "epochs" in search_raw else None
    points = first_points(
        seed_recipe, values.pop("points_to_evaluate", None) or [], params, train, searched_epochs
    )
    seed_epochs = None
    if seed_recipe:
        # The seed recipe's own epochs when the sweep searches them; else the fixed ones.
        seed_epochs = SEED_RECIPE.epochs if "epochs" in search_raw else train.epochs
    config = config_lib.parse(
        SweepConfig,
        {
            **values,
            "train": train,
            "search": params,
            "first_points": points,
            "epochs": epochs,
            "seed_epochs": seed_epochs,
        },
    )
    if len(points) > config.num_samples:
        raise ConfigError(
            f"{len(points)} first points but num_samples={config.num_samples}: raise num_samples"
        )
    return config


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping of key: value, got {value!r}")
    return dict(value)


def epoch_range(spec: Any, train: TrainConfig) -> tuple[int, int]:
    """(fewest, most) epochs: a searched range's bounds, or 1 and the fixed epochs.

    Epochs are the budget, not a sampled value: every trial trains the most, so that trials
    compared at the same epoch (ASHA's rungs) are at the same point of the same learning-rate
    schedule, and each keeps its best epoch from the range (README, The sweep).
    """
    if spec is None:
        return (1, train.epochs)
    ((kind, args),) = spec.items()
    values = [int(a) for a in args]
    return (min(values), max(values))


def parse_search(search: Mapping[str, Any], train: TrainConfig) -> tuple[Param, ...]:
    """The ``search:`` block as the Params Optuna samples: matryoshka_weights expands to one
    ``weight_<dim>`` per dim, matryoshka_weight_profile is ``weight_profile``, and epochs (the
    budget, see epoch_range) is checked but not sampled.

    Every bound and choice is checked as a value of its trainers key, without building a config.
    """
    unknown = sorted(set(search) - SEARCHABLE)
    if unknown:
        raise ConfigError(
            f"search: unknown or unsearchable key(s) {unknown}: searchable are {sorted(SEARCHABLE)}"
        )
    dims = train.matryoshka_dims
    params: list[Param] = []
    for key, spec in search.items():
        if not isinstance(spec, Mapping) or len(spec) != 1:
            raise ConfigError(
                f"search.{key}={spec!r}: give one distribution, e.g. "
                f"{{loguniform: [1.0e-5, 1.0e-4]}} "
                f"or {{choice: [16, 32]}}; put fixed values under train:"
            )
        ((kind, args),) = spec.items()
        if kind not in DISTRIBUTIONS:
            raise ConfigError(
                f"search.{key}: unknown distribution {kind!r}; use one of "
                f"{', '.join(DISTRIBUTIONS)}"
            )
        if not isinstance(args, list) or not args:
            raise ConfigError(f"search.{key}.{kind}: needs a non-empty list, got {args!r}")
        if kind == "choice":
            if any(not isinstance(a, (str, int, float)) or isinstance(a, bool) for a in args):
                # Optuna's storage takes only str/int/float choices (a list of weights breaks it).
                raise ConfigError(
                    f"search.{key}.choice: choices must be strings or numbers, got {args!r}"
                )
        else:
            if len(args) != 2 or not all(
                isinstance(a, (int, float)) and not isinstance(a, bool) for a in args
            ):
                raise ConfigError(f"search.{key}.{kind}: needs [low, high], got {args!r}")
            low, high = args
            if not low < high:
                raise ConfigError(
                    f"search.{key}.{kind}: empty range [{low}, {high}]: low must be < high"
                )
            if kind == "loguniform" and low <= 0:
                raise ConfigError(f"search.{key}.loguniform: low must be > 0, got {low}")
            if kind == "randint" and (low != int(low) or high != int(high)):
                raise ConfigError(f"search.{key}.randint: bounds must be integers, got {args!r}")
        if key == "epochs" and kind not in ("randint", "choice"):
            raise ConfigError(f"search.epochs.{kind}: epochs need randint or choice (integers)")
        for value in args:  # every bound or choice must itself be a valid trainers value
            if key == "matryoshka_weight_profile":
                if not isinstance(value, (int, float)):
                    raise ConfigError(f"search.{key}: {value!r} is not a number")
                continue
            probe = [value] * len(dims) if key == "matryoshka_weights" else value
            try:
                TrainConfig.check_value(key, probe)
            except ConfigError as err:
                raise ConfigError(f"search.{key}: {err}") from None
        if key == "matryoshka_weights":
            params += [Param(key=f"weight_{dim}", kind=kind, args=tuple(args)) for dim in dims]
        elif key == "matryoshka_weight_profile":
            params.append(Param(key="weight_profile", kind=kind, args=tuple(args)))
        elif key != "epochs":
            params.append(Param(key=key, kind=kind, args=tuple(args)))
    return tuple(params)


def first_points(
    seed_recipe: bool,
    points: Any,
    params: tuple[Param, ...],
    train: TrainConfig,
    epochs: tuple[int, int] | None,
) -> tuple[Point, ...]:
    """The points Optuna evaluates first, in sampled-key form: the seed recipe, then the user's.

    A point may name epochs when they are searched (``epochs``: their range); they are not
    sampled, so they are checked and left out of the point.
    """
    if not isinstance(points, list) or not all(isinstance(p, Mapping) for p in points):
        raise ConfigError(
            f"points_to_evaluate: expected a list of {{key: value}} mappings, got {points!r}"
        )
    by_key = {p.key: p for p in params}
    searched = {p.key for p in params}
    if any(k.startswith("weight_") and k != "weight_profile" for k in by_key):
        searched.add("matryoshka_weights")
    dims = train.matryoshka_dims
    raw = [(f"points_to_evaluate[{i}]", dict(p)) for i, p in enumerate(points)]
    if seed_recipe:
        raw.insert(0, ("seed_recipe", SEED_RECIPE.model_dump()))
    out = []
    for label, point in raw:
        recipe = label == "seed_recipe"
        flat: Point = {}
        for key, value in point.items():
            if key == "epochs":
                if epochs is None and not recipe:
                    raise ConfigError(f"{label}.epochs: not a searched key")
                if epochs is not None and not epochs[0] <= value <= epochs[1]:
                    where = "seed_recipe" if recipe else label
                    raise ConfigError(
                        f"{where}: epochs={value} is outside search.epochs {list(epochs)}; widen "
                        "the range" + (" or set seed_recipe: false" if recipe else "")
                    )
            elif key == "matryoshka_weights" and "weight_profile" in by_key:
                if value is not None:
                    raise ConfigError(f"{label}.matryoshka_weights: give weight_profile instead")
                flat["weight_profile"] = 0.0  # all weights alike
            elif key == "matryoshka_weights" and key in searched:
                values = (
                    [1.0] * len(dims)
                    if value is None
                    else value
                    if isinstance(value, list)
                    else [value] * len(dims)
                )
                if len(values) != len(dims):
                    raise ConfigError(
                        f"{label}.matryoshka_weights: {len(values)} weights for {len(dims)} dims"
                    )
                flat.update({f"weight_{d}": float(v) for d, v in zip(dims, values, strict=True)})
            elif key in searched:
                flat[key] = value
            elif not recipe:  # the recipe only sets what this sweep searches
                raise ConfigError(
                    f"{label}.{key}: not a searched key; searched are {sorted(searched)}"
                )
        if recipe:
            # What the recipe does not name, it leaves at the base config's value.
            flat.update(
                {
                    k: getattr(train, k)
                    for k in by_key
                    if k not in flat and k in TrainConfig.model_fields
                }
            )
        for key, value in flat.items():
            if not by_key[key].contains(value):
                if recipe:
                    raise ConfigError(
                        f"seed_recipe: {key}={value} is outside search.{key} "
                        f"{list(by_key[key].args)}; widen the range or set seed_recipe: false"
                    )
                raise ConfigError(
                    f"{label}.{key}={value} is outside search.{key} {list(by_key[key].args)}"
                )
        missing = sorted(set(by_key) - set(flat))
        if missing:
            raise ConfigError(f"{label}: no value for searched key(s) {missing}")
        out.append(flat)
    return tuple(out)


def apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Overrides of sweep keys, or of trainers keys: those go to train: and leave search:."""
    raw = dict(raw)
    train = dict(_mapping(raw.get("train"), "train"))
    for key, value in overrides.items():
        if key in CLI_FIELDS:
            raw[key] = value
        elif key in TrainConfig.model_fields:
            # Fixing the weights also ends a search of their profile.
            fixed = {key, "matryoshka_weight_profile"} if key == "matryoshka_weights" else {key}
            raw["search"] = {
                k: v for k, v in _mapping(raw.get("search"), "search").items() if k not in fixed
            }
            train[key] = value
        else:
            raise ConfigError(
                f"unknown key --{key}: neither a sweep key ({', '.join(CLI_FIELDS)}) nor a "
                "trainers key"
            )
    raw["train"] = train
    return raw


def read_yaml(path: str | Path | None) -> dict[str, Any]:
    """The plain values of a sweep YAML ({} for None: every default)."""
    return config_lib.read_yaml_mapping(path) if path is not None else {}


def load(path: str | Path | None, overrides: Mapping[str, Any] | None = None) -> SweepConfig:
    """Load a sweep YAML and apply overrides: sweep keys, or trainers keys (they go to train:)."""
    return parse(apply_overrides(read_yaml(path), overrides or {}))
