"""Sweep configs: every shipped one validates; bad ones fail before Ray starts, naming the key."""

from pathlib import Path

import pytest
import yaml

from sweeps import config as sweep_config
from sweeps import run
from sweeps.config import SweepConfig
from trainers.config import ConfigError, TrainConfig
from trainers.models import KNOWN_DIMS, declared_dim

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "sweeps" / "configs").glob("*.yaml"))


def test_the_seed_model_configs_are_all_there():
    names = {p.stem for p in CONFIGS}
    assert {
        "local",
        "financial-bge-base",
        "german-tax-bge-m3",
        "swahili-bge-base",
        "catalan-bge-m3",
        "qa-bge-small",
    } <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_validates_and_its_dims_fit_the_model(path):
    config = sweep_config.load(path)
    base = config.train
    dim = declared_dim(base.model)
    assert dim is not None, f"{base.model}: add its dimension to KNOWN_DIMS"
    assert max(base.matryoshka_dims) <= dim
    run.check_model_dims(config)
    assert config.search, "a sweep searches something"
    if config.seed_recipe:
        seed = config.first_points[0]
        assert seed.get("learning_rate") == 2e-5 and seed.get("batch_size") == 32
        weights = config.trial_config(seed).weights
        assert all(w == pytest.approx(1.0) for w in weights)  # every dim alike
        assert config.trial_config(seed).epochs == 4 == config.seed_epochs


def test_the_qa_config_is_a_single_dim_mnrl_run():
    config = sweep_config.load(next(p for p in CONFIGS if p.stem == "qa-bge-small"))
    assert config.train.matryoshka_dims == (384,) == (KNOWN_DIMS["BAAI/bge-small-en-v1.5"],)


def test_weights_expand_to_one_float_per_dim_and_map_back():
    config = sweep_config.parse(
        {
            "train": {"matryoshka_dims": [384, 128, 64]},
            "search": {
                "matryoshka_weights": {"uniform": [0.5, 2.0]},
                "batch_size": {"choice": [16, 32]},
            },
            "seed_recipe": False,
        }
    )
    assert [p.key for p in config.search] == [
        "weight_384",
        "weight_128",
        "weight_64",
        "batch_size",
    ]
    trial = config.trial_config(
        {"weight_384": 2.0, "weight_128": 1.0, "weight_64": 0.5, "batch_size": 16}
    )
    assert trial.matryoshka_weights == (2.0, 1.0, 0.5) and trial.batch_size == 16


def _write(tmp_path, values):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


GOOD = {
    "train": {"matryoshka_dims": [384, 64], "max_pairs": 50},
    "search": {"learning_rate": {"loguniform": [1e-5, 1e-4]}, "batch_size": {"choice": [16, 32]}},
    "seed_recipe": False,
}


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"num_sample": 3}, "num_sample"),
        (
            {"search": {"learning_rate": {"loguniform": [1e-4, 1e-5]}}},
            "search.learning_rate.loguniform: empty range",
        ),
        ({"search": {"batch_size": {"choice": [0, 16]}}}, "batch_size=0"),
        ({"search": {"lr": {"uniform": [0, 1]}}}, "unknown or unsearchable key(s) ['lr']"),
        ({"search": {"epochs": 3}}, "search.epochs=3"),
        ({"search": {"batch_size": {"gaussian": [1, 2]}}}, "unknown distribution 'gaussian'"),
        (
            {"train": {"matryoshka_dims": [384, 64], "matryoshka_weights": [1, 1, 1]}},
            "one weight per dim",
        ),
        ({"train": {"matryoshka_dims": [512, 64]}}, "exceed the dimension of bundled:minilm (384)"),
        (
            {"points_to_evaluate": [{"learning_rate": 1e-5, "batch_size": 64}]},
            "batch_size=64 is outside",
        ),
        (
            {
                "search": {
                    "learning_rate": {"loguniform": [1e-5, 1e-4]},
                    "batch_size": {"choice": [16]},
                },
                "seed_recipe": True,
            },
            "seed_recipe: batch_size=32 is outside",
        ),
        (
            {
                "search": {"matryoshka_weights": {"uniform": [0.5, 2]}},
                "points_to_evaluate": [{"matryoshka_weights": [1, 1, 1]}],
            },
            "3 weights for 2 dims",
        ),
        ({"num_samples": 0}, "num_samples=0"),
        ({"checkpoints_to_keep": 5}, "checkpoints_to_keep=5"),
        ({"guard": {"data": "wordnet"}}, "write guard: {choose: [wordnet]}"),
        ({"guard": {"choose": ["wordnet"], "verify": ["wordnet"]}}, "both choose and verify"),
        ({"guard": {"choose": []}}, "guard.choose"),
        ({"guard": {"choose": [{"data": "wordnet", "max_pairs": 2}]}}, "max_pairs=2"),
    ],
)
def test_bad_sweep_configs_fail_before_ray_starts(tmp_path, capsys, monkeypatch, change, needle):
    from sweeps import tune_run

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started for a bad config")

    monkeypatch.setattr(tune_run, "init_ray", no_ray)
    path = _write(tmp_path, {**GOOD, **change})
    assert (
        run.main(["--config", str(path), "--no-wandb", "--storage_path", str(tmp_path / "runs")])
        == 2
    )
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_cli_overrides_fix_a_searched_key_and_reject_unknown_ones(tmp_path):
    path = _write(tmp_path, GOOD)
    config = sweep_config.load(path, {"batch_size": "16", "num_samples": "4"})
    assert "batch_size" not in [p.key for p in config.search] and config.train.batch_size == 16
    assert config.num_samples == 4
    with pytest.raises(ConfigError, match="--bogus"):
        sweep_config.load(path, {"bogus": "1"})


def test_loading_the_default_sweep_builds_one_train_config(monkeypatch):
    """Parsed once: the base TrainConfig is built once and the rest is typed parts."""
    built = []
    validator = TrainConfig.__pydantic_validator__

    class Counting:
        def __getattr__(self, name):
            return getattr(validator, name)

        def validate_python(self, *args, **kwargs):
            built.append(args[0])
            return validator.validate_python(*args, **kwargs)

    monkeypatch.setattr(TrainConfig, "__pydantic_validator__", Counting())
    config = sweep_config.load(CONFIGS[0].with_name("local.yaml"))
    assert len(built) == 1
    assert isinstance(config, SweepConfig) and isinstance(config.train, TrainConfig)
    assert config.first_points and all(isinstance(p, dict) for p in config.first_points)
    # A trial's config is one more, built from the typed base (in the trial's own process).
    config.trial_config(config.first_points[0])
    assert len(built) == 2


def test_the_typed_config_survives_pickling_unchanged():
    import pickle

    config = sweep_config.load(CONFIGS[0].with_name("local.yaml"))
    assert pickle.loads(pickle.dumps(config)) == config


def test_a_model_or_data_error_exits_2_with_one_line(tmp_path, capsys):
    cases = [
        (["--data", str(tmp_path / "missing.jsonl")], "no such file"),
        (["--model", str(tmp_path / "no-model")], "no such folder"),
    ]
    for extra, needle in cases:
        code = run.main(["--no-wandb", "--storage_path", str(tmp_path / "runs"), *extra])
        err = capsys.readouterr().err
        assert code == 2 and needle in err, err
        assert err.startswith("error: ") and err.count("\n") == 1, err


def test_a_weight_profile_ties_the_weights_to_one_number():
    dims = (384, 256, 128, 64)
    assert sweep_config.profile_weights(dims, 0.0) == (1.0, 1.0, 1.0, 1.0)
    up = sweep_config.profile_weights(dims, 1.0)
    assert up[0] < up[1] < up[2] < up[3] and sum(up) / 4 == pytest.approx(1.0)
    down = sweep_config.profile_weights(dims, -1.0)
    assert down[0] > down[-1]


def test_epochs_are_the_budget_not_a_sampled_key():
    config = sweep_config.parse(
        {
            "train": {"matryoshka_dims": [384, 64]},
            "search": {"epochs": {"randint": [2, 5]}, "batch_size": {"choice": [16, 32]}},
        }
    )
    assert [p.key for p in config.search] == ["batch_size"]
    assert config.epochs == (2, 5) and config.max_epochs == 5 and config.seed_epochs == 4
    assert config.trial_config({"batch_size": 16}).epochs == 5  # a sampled trial: the budget
    assert config.trial_config(config.first_points[0]).epochs == 4  # the seed recipe: its own
    with pytest.raises(ConfigError, match="seed_recipe: epochs=4 is outside"):
        sweep_config.parse({"search": {"epochs": {"randint": [1, 3]}}})


def test_a_guard_source_may_be_named_alone_and_the_default_has_both_roles():
    from sweeps.config import GuardConfig

    guard = GuardConfig.model_validate({"choose": ["unix-faqs", {"data": "x.jsonl"}]})
    assert [s.data for s in guard.choose] == ["unix-faqs", "x.jsonl"]
    assert guard.choose[0].max_pairs == 1000
    assert guard.verify == ()  # the default verifying source was named to choose
    default = GuardConfig()
    assert {s.data for s in default.choose} == {"wordnet", "python-docstrings", "vim-faq"}
    assert [s.data for s in default.verify] == ["unix-faqs"]
    assert default.mix == (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
