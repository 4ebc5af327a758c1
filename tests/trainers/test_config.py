from pathlib import Path

import pytest
from pydantic import ValidationError

from trainers import config as config_lib
from trainers.config import ConfigError, TrainConfig

REPO = Path(__file__).resolve().parents[2]


def test_default_yaml_loads_and_matches_the_documented_budget():
    config = config_lib.load(REPO / "trainers/configs/default.yaml")
    assert config.model == "bundled:minilm" and config.data == "debian"
    assert config.matryoshka_dims == (384, 256, 128, 64)
    assert config.weights == (1.0, 1.0, 1.0, 1.0)
    assert config.eval_size >= 5000 and config.eval_max_queries >= 1000


@pytest.mark.parametrize(
    "values, needle",
    [
        ({"learning_rat": 1e-5}, "learning_rat"),
        ({"loss": "triplet"}, "mnrl, cached_mnrl"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"matryoshka_dims": [64, 128]}, "descending"),
        ({"matryoshka_dims": []}, "matryoshka_dims is empty"),
        ({"matryoshka_weights": [1, 1]}, "one weight per dim"),
        ({"matryoshka_weights": [0, 0, 0, 0]}, "not all zero"),
        ({"eval_size": 1.5}, "eval_size=1.5"),
        ({"eval_size": 0}, "eval_size=0"),
        ({"learning_rate": "fast"}, "learning_rate='fast'"),
        ({"precision": "fp8"}, "auto, fp32, bf16, fp16"),
        ({"lr_scheduler": "exp"}, "lr_scheduler='exp'"),
        ({"epochs": 1.5}, "an integer"),
        ({"query_column": "x", "passage_column": "x"}, "must differ"),
        ({"objective": "best"}, "objective='best'"),
        ({"objective": "dim_32_cosine_map@100"}, "not in matryoshka_dims"),
        ({"no_duplicates": "maybe"}, "true or false"),
        ({"dataloader_workers": -1}, "dataloader_workers=-1"),
    ],
)
def test_bad_values_name_the_key(values, needle):
    with pytest.raises(ConfigError, match=None) as err:
        config_lib.parse(TrainConfig, values)
    assert needle in str(err.value)


def test_unknown_yaml_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 2\nwarmup: 0.1\n")
    with pytest.raises(ConfigError, match="unknown config key.*warmup"):
        config_lib.load(path)


def test_cli_overrides_are_typed():
    overrides = config_lib.parse_overrides(
        [
            "--learning-rate",
            "3e-5",
            "--matryoshka_dims=256,128",
            "--no_duplicates",
            "false",
            "--max_pairs",
            "null",
            "--matryoshka_weights",
            "[2, 1]",
        ]
    )
    config = config_lib.parse(TrainConfig, overrides)
    assert config.learning_rate == 3e-5
    assert config.matryoshka_dims == (256, 128)
    assert config.matryoshka_weights == (2.0, 1.0)
    assert config.no_duplicates is False and config.max_pairs is None


def test_cli_override_of_unknown_key_fails():
    with pytest.raises(ConfigError, match="unknown config key: lr"):
        config_lib.parse_overrides(["--lr", "1e-5"])


def test_config_is_frozen_and_replace_checks():
    config = TrainConfig()
    with pytest.raises(ValidationError, match="frozen"):
        config.epochs = 3  # type: ignore[misc]
    assert config.replace(epochs=3).epochs == 3
    with pytest.raises(ConfigError, match="unknown"):
        config.replace(epoch=3)


def test_help_lists_every_key():
    text = config_lib.describe()
    for name in TrainConfig.model_fields:
        assert f"--{name}" in text
