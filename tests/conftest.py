"""Shared, expensive fixtures: built once per session, copied or read-only per test."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from trainers.tiny import build_tiny_model

# Tests never reach a model or data hub: everything they load is local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    """Read-only: copy it (tmp_path) before changing it."""
    from trainers.models import bundled_path

    return build_tiny_model(tmp_path_factory.mktemp("tiny"), bundled_path("minilm"))


@pytest.fixture(scope="session")
def debian_pairs() -> list[dict[str, str]]:
    """The real Debian pairs (built with apt on first use, then cached on disk)."""
    from trainers import debian

    return debian.load_pairs()


@pytest.fixture(scope="session")
def debian_sample_file(tmp_path_factory, debian_pairs) -> Path:
    """A JSONL of 600 real Debian pairs with their source package as group."""
    path = tmp_path_factory.mktemp("data") / "debian-sample.jsonl"
    rows = debian_pairs[:: max(1, len(debian_pairs) // 600)][:600]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def gated_tiny(tmp_path_factory, tiny_model_path: Path, data: Path, dims, name: str):
    """The tiny model as an export is: copied, its dims recorded, exported to ONNX, int8
    calibrated on real Debian pairs that the gate task (200 queries: enough to decide) does not
    score. (folder, config, task); gate it with trainers.gate.gate."""
    import shutil

    from trainers import export, gate, precision
    from trainers.config import TrainConfig
    from trainers.data import load_pairs
    from trainers.models import write_matryoshka_info
    from trainers.tasks import pairs_task

    folder = shutil.copytree(tiny_model_path, tmp_path_factory.mktemp(name) / name)
    write_matryoshka_info(folder, dims)
    export.export(folder)
    config = TrainConfig(
        model=str(folder),
        matryoshka_dims=tuple(dims),
        data=str(data),
        group_column="source",
        max_seq_length=64,
    )
    task = pairs_task(config, 400, gate.MIN_GATE_QUERIES, seed=0)
    precision.calibrate_apart(folder, load_pairs(config)[0], task)
    return folder, config, task


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory) -> tuple[int, Path, str]:
    """``python sweeps/run.py --smoke-test`` once per session (tests.sweeps.smoke): (exit code,
    its folder, its output). Read-only: the sweep tests and the quality benchmark read it."""
    from tests.sweeps.smoke import run_smoke_sweep

    return run_smoke_sweep(tmp_path_factory.mktemp("runs"))
