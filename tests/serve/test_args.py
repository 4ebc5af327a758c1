"""Each serving default has one home (serve/args.py), which the YAML and the flags read."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serve.args import HealthArgs, ServeArgs, flag

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["config.yaml", "cluster.yaml"])
def test_the_serve_yamls_repeat_no_default(name):
    config = yaml.safe_load((REPO / "serve" / name).read_text())
    for app in config["applications"]:
        fields = (
            ServeArgs if app["import_path"].endswith(":build_app") else HealthArgs
        ).model_fields
        for key, value in app["args"].items():
            assert key in fields, f"serve/{name}: {key} is not an argument"
            assert value != fields[key].default, (
                f"serve/{name}: {key}: {value!r} is the default; its home is serve/args.py"
            )


def test_the_flags_take_their_default_and_help_from_the_args():
    from serve.app import _main

    with pytest.raises(SystemExit):
        _main(["--help"])
    assert flag("backend") == {
        "default": "auto",
        "help": ServeArgs.model_fields["backend"].description,
    }


@pytest.mark.parametrize("name", ["config.yaml", "cluster.yaml"])
def test_each_yaml_app_has_a_typed_builder_that_takes_its_args(name):
    # What `serve run` does with `args:`: validate them into the builder's annotated type.
    import importlib
    import inspect

    config = yaml.safe_load((REPO / "serve" / name).read_text())
    for app in config["applications"]:
        module, attribute = app["import_path"].split(":")
        builder = getattr(importlib.import_module(module), attribute)
        (parameter,) = inspect.signature(builder).parameters.values()
        assert parameter.annotation in (ServeArgs, HealthArgs), app["import_path"]
        assert builder(parameter.annotation.model_validate(app["args"])) is not None
