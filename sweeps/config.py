"""The typed configuration of a sweep, loaded from YAML and checked before Ray starts.

    name: local
    train: {...}                  # fixed trainers keys (see `python -m trainers.train --help`)
    search:                       # what Optuna samples, per trainers key
      learning_rate: {loguniform: [1.0e-5, 2.0e-4]}
      batch_size: {choice: [16, 32]}
      epochs: {randint: [1, 3]}           # inclusive
      matryoshka_weights: {uniform: [0.5, 2.0]}   # one weight per dim
    seed_recipe: true             # evaluate lr 2e-5, batch 32, 4 epochs, weights 1 first

Every error names the key and what would be right.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainers import config as train_config
from trainers.config import ConfigError, TrainConfig

DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice")
# Keys Optuna may sample; the rest of TrainConfig is fixed per sweep (under `train:`).
SEARCHABLE = {
    "learning_rate", "batch_size", "epochs", "matryoshka_weights", "warmup_ratio", "loss",
    "weight_decay", "lr_scheduler", "gradient_accumulation_steps", "mini_batch_size",
}
# The published Matryoshka models' hand-picked recipe.
SEED_RECIPE = {"learning_rate": 2e-5, "batch_size": 32, "epochs": 4, "matryoshka_weights": 1.0}


@dataclass(frozen=True)
class Param:
    """One searched key: a distribution with its bounds or choices."""

    key: str
    kind: str
    args: tuple[Any, ...]

    def domain(self):
        from ray import tune

        if self.kind == "loguniform":
            return tune.loguniform(*self.args)
        if self.kind == "uniform":
            return tune.uniform(*self.args)
        if self.kind == "randint":
            return tune.randint(self.args[0], self.args[1] + 1)  # YAML bounds are inclusive
        return tune.choice(list(self.args))

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.args
        return self.args[0] <= value <= self.args[1]


@dataclass(frozen=True)
class SweepConfig:
    name: str = field(default="local", metadata={"help": "sweep name: runs/<name>/, the W&B group"})
    train: dict[str, Any] = field(default_factory=dict, metadata={"help": "fixed trainers keys"})
    search: dict[str, Any] = field(default_factory=dict, metadata={"help": "searched trainers keys"})
    seed_recipe: bool = field(default=True, metadata={"help": "evaluate the seed recipe as the first trial"})
    points_to_evaluate: tuple[dict[str, Any], ...] = field(
        default=(), metadata={"help": "further first points, as {key: value} of searched keys"}
    )
    num_samples: int = field(default=6, metadata={"help": "trials in all (first points included)"})
    max_concurrent_trials: int = field(default=2, metadata={"help": "trials running at once"})
    cpus_per_trial: float = field(default=1.0, metadata={"help": "CPUs reserved per trial"})
    gpus_per_trial: float = field(default=0.0, metadata={"help": "GPUs per trial (1 on a GPU cluster)"})
    objective: str = field(
        default="mean_cosine_map@100",
        metadata={"help": "maximised metric: mean over dims, or one dim's (dim_64_cosine_map@100)"},
    )
    grace_period: int = field(default=1, metadata={"help": "ASHA: epochs before a trial can be stopped"})
    reduction_factor: int = field(default=2, metadata={"help": "ASHA: keep 1/reduction_factor per rung"})
    seed: int = field(default=42, metadata={"help": "Optuna TPE sampler seed"})
    storage_path: str = field(
        default="runs", metadata={"help": "where runs/<name>/ lives: a local folder, or s3://... on a cluster"}
    )
    checkpoints_to_keep: int = field(default=2, metadata={"help": "checkpoints kept per trial (1-2)"})
    max_failures: int = field(default=0, metadata={"help": "retries of a trial whose worker died"})
    wandb_project: str = field(default="matryoshka-sweeps", metadata={"help": "W&B project"})
    wandb: bool = field(default=True, metadata={"help": "log to W&B (offline files without WANDB_API_KEY)"})

    def __post_init__(self) -> None:
        for key in ("num_samples", "max_concurrent_trials", "grace_period", "reduction_factor"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)!r}: must be an integer >= 1")
        if self.reduction_factor < 2:
            raise ConfigError(f"reduction_factor={self.reduction_factor}: must be >= 2")
        if not 1 <= self.checkpoints_to_keep <= 2:
            raise ConfigError(f"checkpoints_to_keep={self.checkpoints_to_keep}: keep 1 or 2 (checkpoints fill disks)")
        if self.cpus_per_trial <= 0 or self.gpus_per_trial < 0:
            raise ConfigError("cpus_per_trial must be > 0 and gpus_per_trial >= 0")
        if not self.name or "/" in self.name:
            raise ConfigError(f"name={self.name!r}: a non-empty name without '/'")
        unknown = sorted(set(self.search) - SEARCHABLE)
        if unknown:
            raise ConfigError(f"search: unknown or unsearchable key(s) {unknown}: searchable are {sorted(SEARCHABLE)}")
        overlap = sorted(set(self.search) & set(self.train))
        if overlap:
            raise ConfigError(f"{overlap} are both fixed (train:) and searched (search:): keep one")
        object.__setattr__(self, "points_to_evaluate", tuple(self.points_to_evaluate))
        # Build everything once now: errors surface here, before Ray starts.
        self.params()
        self.base_config()
        for point in self.first_points():
            self.trial_config(point)

    # --- search space --------------------------------------------------------------------
    def params(self) -> list[Param]:
        """Searched keys as Params; matryoshka_weights expands to one ``weight_<dim>`` per dim."""
        out = []
        for key, spec in self.search.items():
            if not isinstance(spec, dict) or len(spec) != 1:
                raise ConfigError(
                    f"search.{key}={spec!r}: give one distribution, e.g. {{loguniform: [1.0e-5, 1.0e-4]}} "
                    f"or {{choice: [16, 32]}}; put fixed values under train:"
                )
            (kind, args), = spec.items()
            if kind not in DISTRIBUTIONS:
                raise ConfigError(f"search.{key}: unknown distribution {kind!r}; use one of {', '.join(DISTRIBUTIONS)}")
            if not isinstance(args, list) or not args:
                raise ConfigError(f"search.{key}.{kind}: needs a non-empty list, got {args!r}")
            if kind == "choice":
                if any(not isinstance(a, (str, int, float)) or isinstance(a, bool) for a in args):
                    # Optuna's storage takes only str/int/float choices (a list of weights breaks it).
                    raise ConfigError(f"search.{key}.choice: choices must be strings or numbers, got {args!r}")
            else:
                if len(args) != 2 or not all(isinstance(a, (int, float)) for a in args):
                    raise ConfigError(f"search.{key}.{kind}: needs [low, high], got {args!r}")
                low, high = args
                if not low < high:
                    raise ConfigError(f"search.{key}.{kind}: empty range [{low}, {high}]: low must be < high")
                if kind == "loguniform" and low <= 0:
                    raise ConfigError(f"search.{key}.loguniform: low must be > 0, got {low}")
                if kind == "randint" and (low != int(low) or high != int(high)):
                    raise ConfigError(f"search.{key}.randint: bounds must be integers, got {args!r}")
            if key == "matryoshka_weights":
                if kind == "choice" and any(not isinstance(a, (int, float)) for a in args):
                    raise ConfigError("search.matryoshka_weights.choice: give numbers (one is drawn per dim)")
                out += [Param(f"weight_{dim}", kind, tuple(args)) for dim in self.dims]
            else:
                out.append(Param(key, kind, tuple(args)))
            # Every bound or choice must itself be a valid trainers value.
            for value in (args if kind == "choice" else args):
                probe = {"matryoshka_weights": [value] * len(self.dims)} if key == "matryoshka_weights" else {key: value}
                self._checked({**self.train, **probe}, f"search.{key}")
        return out

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(self.train.get("matryoshka_dims", TrainConfig().matryoshka_dims))

    def first_points(self) -> list[dict[str, Any]]:
        """Points Optuna evaluates first (in sampled-key form): the seed recipe, then the user's."""
        points = []
        names = {p.key: p for p in self.params()}
        raw = ([SEED_RECIPE] if self.seed_recipe else []) + list(self.points_to_evaluate)
        for i, point in enumerate(raw):
            label = "seed_recipe" if self.seed_recipe and i == 0 else f"points_to_evaluate[{i - self.seed_recipe}]"
            flat: dict[str, Any] = {}
            for key, value in point.items():
                if key == "matryoshka_weights" and "matryoshka_weights" in self.search:
                    values = value if isinstance(value, list) else [value] * len(self.dims)
                    if len(values) != len(self.dims):
                        raise ConfigError(f"{label}.matryoshka_weights: {len(values)} weights for {len(self.dims)} dims")
                    flat.update({f"weight_{d}": float(v) for d, v in zip(self.dims, values)})
                elif key in self.search:
                    flat[key] = value
                elif key in SEED_RECIPE and point is SEED_RECIPE:
                    continue  # the recipe only sets what this sweep searches
                else:
                    raise ConfigError(f"{label}.{key}: not a searched key; searched are {sorted(self.search)}")
            if point is SEED_RECIPE:
                # What the recipe does not name, it leaves at the trainer's default.
                defaults = TrainConfig()
                flat.update({k: getattr(defaults, k) for k in names if k not in flat and hasattr(defaults, k)})
            for key, value in flat.items():
                if key in names and not names[key].contains(value):
                    if point is SEED_RECIPE:
                        raise ConfigError(
                            f"seed_recipe: {key}={value} is outside search.{key} {names[key].args}; widen the "
                            "range or set seed_recipe: false"
                        )
                    raise ConfigError(f"{label}.{key}={value} is outside search.{key} {names[key].args}")
            missing = sorted(set(names) - set(flat))
            if missing:
                raise ConfigError(f"{label}: no value for searched key(s) {missing}")
            points.append(flat)
        if len(points) > self.num_samples:
            raise ConfigError(f"{len(points)} first points but num_samples={self.num_samples}: raise num_samples")
        return points

    # --- trials --------------------------------------------------------------------------
    def base_config(self) -> TrainConfig:
        return self._checked({**self.train, "objective": self.objective}, "train")

    def trial_config(self, sampled: dict[str, Any], output_dir: str | None = None) -> TrainConfig:
        """The trainers config of one trial: fixed keys plus what Optuna sampled."""
        values = {**self.train, "objective": self.objective}
        weights = {int(k.split("_")[1]): v for k, v in sampled.items() if k.startswith("weight_")}
        values.update({k: v for k, v in sampled.items() if not k.startswith("weight_")})
        if weights:
            values["matryoshka_weights"] = [float(weights[d]) for d in self.dims]
        if output_dir is not None:
            values["output_dir"] = output_dir
        return self._checked(values, "trial")

    @staticmethod
    def _checked(values: dict[str, Any], where: str) -> TrainConfig:
        try:
            return train_config.from_dict(values)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["points_to_evaluate"] = list(self.points_to_evaluate)
        return out


FIELDS = {f.name: f for f in dataclasses.fields(SweepConfig)}


def from_dict(values: dict[str, Any]) -> SweepConfig:
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ConfigError(f"unknown sweep config key(s): {', '.join(unknown)}. Known keys: {', '.join(FIELDS)}")
    values = dict(values)
    for key in ("train", "search"):
        if values.get(key) is None:
            values[key] = {}
        if not isinstance(values[key], dict):
            raise ConfigError(f"{key}: expected a mapping of key: value")
    for key, f in FIELDS.items():
        if key in values and f.type in ("int", "float", "bool") and isinstance(values[key], str):
            values[key] = _parse_scalar(key, values[key], f.type)
    return SweepConfig(**values)


def _parse_scalar(key: str, text: str, kind: str) -> Any:
    value = yaml.safe_load(text)
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind in ("int", "float") and isinstance(value, (int, float)) and not isinstance(value, bool):
        if kind == "int" and value != int(value):
            raise ConfigError(f"{key}={text!r}: expected an integer")
        return int(value) if kind == "int" else float(value)
    raise ConfigError(f"{key}={text!r}: expected {'true or false' if kind == 'bool' else 'a number'}")


def load(path: str | Path | None, overrides: dict[str, Any] | None = None) -> SweepConfig:
    """Load a sweep YAML and apply overrides: sweep keys, or trainers keys (they go to train:)."""
    values = train_config.read_yaml_mapping(path) if path is not None else {}
    values.setdefault("train", {})
    values["train"] = dict(values["train"] or {})
    for key, value in (overrides or {}).items():
        if key in FIELDS and key not in ("train", "search"):
            values[key] = value
        elif key in train_config.FIELDS:
            values["search"] = {k: v for k, v in (values.get("search") or {}).items() if k != key}
            values["train"][key] = value  # trainers' config converts CLI strings itself
        else:
            raise ConfigError(f"unknown key --{key}: neither a sweep key ({', '.join(FIELDS)}) nor a trainers key")
    return from_dict(values)
