"""What a replica encodes with: torch, or ONNX Runtime fp32 or int8, from the model folder.

A model folder exported by a sweep (or by ``python -m trainers.backends FOLDER``) holds
``onnx/model.onnx`` and ``onnx/model_qint8.onnx``, and its matryoshka.json records whether
each backend kept retrieval quality within tolerance of torch fp32 at every Matryoshka dim
(the gate). ``--backend auto`` serves the fastest gated backend for the device: ONNX on a CPU
(int8 first, then fp32), torch on a CUDA GPU. A backend that failed the gate, or was never
gated, is served only with ``--allow-ungated``, and the start-up log says why.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np

from trainers.errors import ModelError

logger = logging.getLogger("serve")

Backend = Literal["auto", "torch", "onnx", "onnx-int8"]
CPU_PREFERENCE = ("onnx-int8", "onnx")  # fastest first (measured: README, Serving)


class TorchEncoder:
    """sentence-transformers' own encode, behind the same interface as the ONNX encoder."""

    backend = "torch"

    def __init__(self, model) -> None:
        self.model = model
        self.dim = int(model.get_embedding_dimension())
        self.max_seq_length = int(model.max_seq_length)
        self.prompts: dict[str, str] = dict(model.prompts)

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(
            texts, batch_size=len(texts), convert_to_numpy=True, normalize_embeddings=True
        )

    def encode_counted(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        """``encode``, and each text's token count (a response's ``usage``)."""
        # encode() tokenizes inside sentence-transformers, out of reach: count in one more call.
        encoded = self.model.tokenizer(texts, truncation=True, max_length=self.max_seq_length)
        return self.encode(texts), [len(ids) for ids in encoded["input_ids"]]


def choose(
    requested: Backend, folder: Path | None, cuda: bool, allow_ungated: bool
) -> tuple[str, str]:
    """The backend to serve and why, or ModelError naming the fix."""
    from trainers.backends import available
    from trainers.models import matryoshka_info

    have = available(folder) if folder is not None else ["torch"]
    gate: dict[str, Any] = matryoshka_info(folder).get("backends", {}) if folder else {}

    def gated(backend: str) -> bool:
        return backend == "torch" or bool(gate.get(backend, {}).get("gated"))

    if requested == "auto":
        if cuda:
            return "torch", "auto: a CUDA GPU, where torch is the fast path"
        for backend in CPU_PREFERENCE:
            if backend in have and gated(backend):
                drop = gate[backend]["largest_drop"]
                return backend, (
                    f"auto: the fastest backend on a CPU that passed the quality gate (largest "
                    f"MAP@100 drop {drop:+.4f}, tolerance {gate['tolerance']})"
                )
        if len(have) == 1:
            missing = "no ONNX export"
        elif "undecided" in gate:
            missing = f"the gate could not decide ({gate['undecided']})"
        else:
            missing = "no ONNX backend passed the gate"
        return "torch", f"auto: {missing} in the model folder"
    if requested not in have:
        raise ModelError(
            f"--backend {requested}: the model folder has no {requested} export; make it with "
            f"python -m trainers.backends {folder}"
        )
    if gated(requested):
        return requested, "requested; it passed the quality gate"
    if requested not in gate:
        why = "it was never gated (python -m trainers.backends FOLDER --gate-data PAIRS)"
    elif "undecided" in gate:
        why = f"its gate could not decide ({gate['undecided']})"
    else:
        why = (
            f"its largest MAP@100 drop against torch is {gate[requested]['largest_drop']:+.4f}, "
            f"over the tolerance {gate['tolerance']}"
        )
    if not allow_ungated:
        raise ModelError(
            f"--backend {requested} is not servable by default: {why}; pass --allow-ungated "
            "to serve it anyway"
        )
    return requested, f"requested with --allow-ungated although {why}"


def load(
    requested: Backend, spec: str, device: str | None, allow_ungated: bool, threads: int | None
):
    """(encoder, backend, why) for the model ``spec`` (a folder, a URI, bundled:...).

    ``threads``: the CPUs the encoder may use (a replica's share: that many threads, ONNX
    Runtime's without spin-waiting), or None for the libraries' own defaults (one process
    alone on the machine: ONNX Runtime's thread per core, spinning between calls)."""
    import torch

    from trainers.models import load_model, resolve

    folder, is_local = resolve(spec)
    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    backend, why = choose(requested, Path(folder) if is_local else None, cuda, allow_ungated)
    if backend == "torch":
        if threads is not None:
            torch.set_num_threads(threads)
        return TorchEncoder(load_model(folder, device=device).eval()), backend, why
    from trainers.backends import OnnxEncoder

    return OnnxEncoder(folder, backend, threads=threads), backend, why
