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
from typing import Annotated, Any

from pydantic import Field

from sweeps.space import DISTRIBUTIONS, Param
from trainers import config as config_lib
from trainers.config import DEFAULT_OBJECTIVE, SEED_RECIPE, Config, ConfigError, TrainConfig

# Keys Optuna may sample; the rest of TrainConfig is fixed per sweep (under `train:`).
SEARCHABLE = {
    "learning_rate",
    "batch_size",
    "epochs",
    "matryoshka_weights",
    "warmup_ratio",
    "loss",
    "weight_decay",
    "lr_scheduler",
    "gradient_accumulation_steps",
    "mini_batch_size",
}
Point = dict[str, float | int | str]


class SweepConfig(Config):
    name: str = Field(
        "local", pattern=r"^[^/]+$", description="sweep name: runs/<name>/, the W&B group"
    )
    train: TrainConfig = Field(description="the base trainers config: every fixed key")
    search: tuple[Param, ...] = Field(
        (), description="searched keys (one weight_<dim> per Matryoshka dim)"
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
    gpus_per_trial: float = Field(0.0, ge=0, description="GPUs per trial (1 on a GPU cluster)")
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
        2, description="checkpoints kept per trial (1-2: checkpoints fill disks)"
    )
    max_failures: Annotated[int, Field(ge=0)] = Field(
        0, description="retries of a trial whose worker died"
    )
    wandb_project: str = Field("matryoshka-sweeps", description="W&B project")
    wandb: bool = Field(True, description="log to W&B (offline files without WANDB_API_KEY)")

    @property
    def dims(self) -> tuple[int, ...]:
        return self.train.matryoshka_dims

    def trial_config(
        self, sampled: Mapping[str, Any], output_dir: str | None = None
    ) -> TrainConfig:
        """The trainers config of one trial: the base config plus what Optuna sampled."""
        changes = {k: v for k, v in sampled.items() if not k.startswith("weight_")}
        weights = {int(k.split("_")[1]): v for k, v in sampled.items() if k.startswith("weight_")}
        if weights:
            changes["matryoshka_weights"] = [float(weights[d]) for d in self.dims]
        if output_dir is not None:
            changes["output_dir"] = output_dir
        try:
            return self.train.replace(**changes)
        except ConfigError as err:
            raise ConfigError(f"trial: {err}") from None


# The YAML's keys: the scalar fields, train/search as mappings, and the raw first points.
YAML_KEYS = (set(SweepConfig.model_fields) - {"first_points"}) | {"points_to_evaluate"}
# What a `--key value` on the command line may set at the sweep level.
CLI_FIELDS = {
    k: f
    for k, f in SweepConfig.model_fields.items()
    if k not in ("train", "search", "first_points")
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
    objective = values.get("objective", DEFAULT_OBJECTIVE)
    train = config_lib.parse(TrainConfig, {**train_raw, "objective": objective}, where="train")
    params = parse_search(search_raw, train)
    seed_recipe = SweepConfig.check_value("seed_recipe", values.get("seed_recipe", True))
    points = first_points(seed_recipe, values.pop("points_to_evaluate", None) or [], params, train)
    config = config_lib.parse(
        SweepConfig, {**values, "train": train, "search": params, "first_points": points}
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


def parse_search(search: Mapping[str, Any], train: TrainConfig) -> tuple[Param, ...]:
    """The ``search:`` block as Params; matryoshka_weights expands to one ``weight_<dim>`` per dim.

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
        for value in args:  # every bound or choice must itself be a valid trainers value
            probe = [value] * len(dims) if key == "matryoshka_weights" else value
            try:
                TrainConfig.check_value(key, probe)
            except ConfigError as err:
                raise ConfigError(f"search.{key}: {err}") from None
        if key == "matryoshka_weights":
            params += [Param(key=f"weight_{dim}", kind=kind, args=tuple(args)) for dim in dims]
        else:
            params.append(Param(key=key, kind=kind, args=tuple(args)))
    return tuple(params)


def first_points(
    seed_recipe: bool, points: Any, params: tuple[Param, ...], train: TrainConfig
) -> tuple[Point, ...]:
    """The points Optuna evaluates first, in sampled-key form: the seed recipe, then the user's."""
    if not isinstance(points, list) or not all(isinstance(p, Mapping) for p in points):
        raise ConfigError(
            f"points_to_evaluate: expected a list of {{key: value}} mappings, got {points!r}"
        )
    by_key = {p.key: p for p in params}
    searched = {p.key for p in params} | (
        {"matryoshka_weights"} if any(k.startswith("weight_") for k in by_key) else set()
    )
    dims = train.matryoshka_dims
    raw = [(f"points_to_evaluate[{i}]", dict(p)) for i, p in enumerate(points)]
    if seed_recipe:
        raw.insert(0, ("seed_recipe", SEED_RECIPE.model_dump()))
    out = []
    for label, point in raw:
        recipe = label == "seed_recipe"
        flat: Point = {}
        for key, value in point.items():
            if key == "matryoshka_weights" and key in searched:
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
                        f"{list(by_key[key].args)}; widen "
                        "the range or set seed_recipe: false"
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
            raw["search"] = {
                k: v for k, v in _mapping(raw.get("search"), "search").items() if k != key
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
