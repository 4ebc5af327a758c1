import os
from pathlib import Path

import pytest

from trainers import models
from trainers.config import TrainConfig
from trainers.models import ModelError


def test_bundled_model_checks_sha256(monkeypatch):
    path = models.bundled_path("minilm")
    assert (path / "model.safetensors").is_file()
    package, _ = models.BUNDLED_MODELS["minilm"]
    monkeypatch.setitem(models.BUNDLED_MODELS, "minilm", (package, "0" * 64))
    with pytest.raises(ModelError, match="sha256"):
        models.bundled_path("minilm")


def test_unknown_bundled_name():
    with pytest.raises(ModelError, match="bundled:minilm"):
        models.resolve("bundled:bert")


def test_missing_local_folder_is_an_error_not_a_hub_lookup(tmp_path):
    with pytest.raises(ModelError, match="no such folder"):
        models.resolve(str(tmp_path / "nope"))
    assert models.resolve("BAAI/bge-small-en-v1.5") == ("BAAI/bge-small-en-v1.5", False)


def test_bundled_model_loads_offline_and_restores_env(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    model = models.load_model("bundled:minilm", max_seq_length=64)
    assert models.embedding_dim(model) == 384
    assert model.max_seq_length == 64
    assert "HF_HUB_OFFLINE" not in os.environ


def test_dims_above_the_model_fail_before_any_data_is_read(tiny_model_path, tmp_path):
    from trainers.train import train

    config = TrainConfig(
        model=str(tiny_model_path),
        data=str(tmp_path / "does-not-exist.jsonl"),
        matryoshka_dims=(512, 256),
        output_dir=str(tmp_path / "out"),
    )
    with pytest.raises(ModelError, match=r"\[512\] exceed the dimension .* \(384\)"):
        train(config)


def test_bundled_tiny_is_built_once_per_machine_and_identically_everywhere(monkeypatch, tmp_path):
    # Every node of a cluster builds its own copy for a smoke sweep: the copies must agree.
    from safetensors.torch import load_file

    copies = []
    for machine in ("a", "b"):
        monkeypatch.setenv("MATRYOSHKA_CACHE", str(tmp_path / machine))
        target, is_local = models.resolve("bundled:tiny")
        assert is_local and target.startswith(str(tmp_path / machine))
        stamp = os.stat(os.path.join(target, "modules.json")).st_mtime_ns
        assert models.resolve("bundled:tiny")[0] == target  # built once, then reused
        assert os.stat(os.path.join(target, "modules.json")).st_mtime_ns == stamp
        copies.append(load_file(os.path.join(target, "model.safetensors")))
        assert models.declared_dim("bundled:tiny") == 384
    assert copies[0].keys() == copies[1].keys()
    assert all((copies[0][k] == copies[1][k]).all() for k in copies[0])
    assert not list((tmp_path / "a").glob(".tiny-build-*"))  # no half-built leftovers


def test_a_model_at_a_uri_is_fetched_afresh_and_a_missing_one_named(
    monkeypatch, tmp_path, tiny_model_path
):
    import shutil

    monkeypatch.setenv("MATRYOSHKA_CACHE", str(tmp_path / "cache"))
    bucket = tmp_path / "bucket" / "sweep" / "best"
    shutil.copytree(tiny_model_path, bucket)
    uri = f"file://{bucket}"
    model = models.load_model(uri)
    assert model.encode(["a terminal text editor"]).shape == (1, 384)
    # A newer export at the same URI replaces the cached copy.
    (bucket / "marker.txt").write_text("new export")
    target, is_local = models.resolve(uri)
    assert is_local and (Path(target) / "marker.txt").read_text() == "new export"
    with pytest.raises(ModelError, match="no such folder"):
        models.resolve(f"file://{tmp_path}/bucket/sweep/nothing")
