"""Which encoder a replica serves with: torch, or ONNX Runtime fp32 or int8, and why.

The encoders themselves are in trainers/encoders.py. A model folder exported by a sweep (or by
``python -m trainers.export FOLDER``) holds
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

from trainers.errors import ModelError
from trainers.precision import CPU_PREFERENCE

logger = logging.getLogger("serve")

Backend = Literal["auto", "torch", "onnx", "onnx-int8"]


def choose(
    requested: Backend, folder: Path | None, cuda: bool, allow_ungated: bool
) -> tuple[str, str]:
    """The backend to serve and why, or ModelError naming the fix."""
    from trainers.encoders import available
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
            f"python -m trainers.export {folder}"
        )
    if gated(requested):
        return requested, "requested; it passed the quality gate"
    if requested not in gate:
        why = "it was never gated (python -m trainers.export FOLDER --gate-data PAIRS)"
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

    from trainers.encoders import OnnxEncoder, TorchEncoder
    from trainers.models import load_model, resolve

    folder, is_local = resolve(spec)
    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    backend, why = choose(requested, Path(folder) if is_local else None, cuda, allow_ungated)
    if backend == "torch":
        if threads is not None:
            torch.set_num_threads(threads)
        return TorchEncoder(load_model(folder, device=device).eval()), backend, why

    return OnnxEncoder(folder, backend, threads=threads), backend, why
