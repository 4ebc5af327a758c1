"""cluster.yaml and the cluster sweep config, checked by Ray's own code and the README's claims."""

from __future__ import annotations

import re
import sys

import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.cluster.twin import REPO

CLUSTER = REPO / "cluster.yaml"


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


@pytest.fixture(scope="module")
def prepared(raw) -> dict:
    config = prepare_config(raw)
    validate_config(config)
    return config


def test_ray_accepts_the_cluster_config(prepared):
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_the_head_runs_no_trials_and_has_no_gpu(prepared):
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"].get("CPU") == 0
    assert head["resources"].get("GPU", 0) == 0
    assert not head["node_config"]["InstanceType"].startswith(("g", "p"))  # not a GPU instance


def test_every_worker_type_requests_a_gpu_and_scales_from_zero(prepared):
    workers = {
        k: v for k, v in prepared["available_node_types"].items() if k != prepared["head_node_type"]
    }
    assert workers
    for name, node in workers.items():
        assert node["resources"].get("GPU", 0) >= 1, name
        assert node["min_workers"] == 0, name
        assert 0 < node["max_workers"] <= prepared["max_workers"], name
        assert node["node_config"]["InstanceType"].startswith(("g5.", "g6.", "p4", "p5")), name
    assert 0 < prepared["idle_timeout_minutes"] <= 15


def test_the_image_is_the_installed_ray_and_python(raw):
    image = raw["docker"]["image"]
    assert "ray-ml" not in image  # deprecated, stuck at Ray 2.30
    match = re.fullmatch(r"rayproject/ray:(?P<ray>[\d.]+)-py(?P<py>\d+)-gpu", image)
    assert match, image
    assert match["ray"] == ray.__version__
    assert match["py"] == f"{sys.version_info.major}{sys.version_info.minor}"
    assert "worker_image" not in raw["docker"] and "head_image" not in raw["docker"]


def test_the_project_and_the_auth_token_reach_every_node(raw, prepared):
    assert raw["file_mounts"]["~/matryoshka-sweeps"] == "."
    assert raw["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert raw["rsync_filter"] == [".gitignore"]  # .venv, runs/ and weights stay behind
    for commands in (prepared["head_setup_commands"], prepared["worker_setup_commands"]):
        assert any("pip install" in c and "~/matryoshka-sweeps" in c for c in commands)
        assert any("RAY_AUTH_MODE=token" in c for c in commands)


def test_no_secrets_in_the_file():
    text = CLUSTER.read_text()
    for secret in ("aws_access_key_id", "aws_secret_access_key", "AKIA"):
        assert secret not in text
    assert not re.search(r"WANDB_API_KEY=\w", text)  # the comments show WANDB_API_KEY=... only


def test_a_comment_above_every_key():
    lines = CLUSTER.read_text().splitlines()
    key = re.compile(r"^\s*(- )?[\w~./-]+:(\s|$)")
    for number, line in enumerate(lines):
        if not key.match(line) or line.lstrip().startswith("#"):
            continue
        above = next(
            (previous.strip() for previous in reversed(lines[:number]) if previous.strip()), ""
        )
        assert above.startswith("#"), (
            f"cluster.yaml line {number + 1} has no comment above: {line.strip()}"
        )


def test_the_cluster_sweep_uses_shared_storage_and_the_local_one_does_not():
    from sweeps import config as sweep_config

    cluster = sweep_config.load(REPO / "sweeps" / "configs" / "cluster.yaml", {})
    local = sweep_config.load(REPO / "sweeps" / "configs" / "local.yaml", {})
    assert cluster.storage_path.startswith("s3://")
    assert cluster.gpus_per_trial == 1
    workers = yaml.safe_load(CLUSTER.read_text())["available_node_types"]["gpu_worker"]
    assert cluster.max_concurrent_trials <= workers["max_workers"]
    assert cluster.cpus_per_trial <= workers["resources"]["CPU"]
    assert "://" not in local.storage_path


def test_the_placeholder_bucket_is_refused_before_ray_starts(capsys, monkeypatch):
    from sweeps import run

    monkeypatch.setattr(
        "sweeps.tune_run.run_sweep", lambda *a, **k: pytest.fail("Ray must not start")
    )
    assert run.main(["--config", "sweeps/configs/cluster.yaml"]) == 2
    assert "--storage_path s3://<your bucket>" in capsys.readouterr().err
