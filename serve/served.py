"""One served model: what its files say it may answer, and, once loaded, its encoder.

``ModelInfo`` is read from the model folder without loading weights: its dims, the backend
``--backend`` picks for it (serve/backend_choice.py), its output-precision gate and
recommended dim (trainers/precision.py), so GET /v1/models lists every served model, loaded on
this replica or not. ``ServedModel`` adds the encoder and the int8 calibration; it checks that
a request's ``encoding_format`` passed the gate at the dim asked for, and quantizes.
No Ray here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serve import backend_choice
from serve.api import APIError, ErrorKind
from serve.args import ServeArgs
from trainers import precision

# encoding_format -> the precision it sends (float and base64 are float32 vectors).
FORMATS = {"float": "float32", "base64": "float32", **{p: p for p in precision.QUANTIZED}}


@dataclass
class ModelInfo:
    """A served model as its files describe it."""

    name: str
    spec: str  # what was given: a folder, a URI, bundled:...
    folder: str  # where it is on this machine
    is_local: bool
    dim: int
    trained_dims: list[int]
    backend: str
    backend_reason: str
    max_input_tokens: int | None
    precisions: dict[str, Any] = field(default_factory=dict)  # the folder's gate record

    @classmethod
    def read(cls, spec: str, name: str, args: ServeArgs) -> ModelInfo:
        """From the files only; a backend that may not be served raises ModelError (the
        server does not start), as it does when the model loads."""
        import torch

        from trainers.models import declared_dim, matryoshka_info, resolve

        folder, is_local = resolve(spec)
        cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        backend, why = backend_choice.choose(
            args.backend, Path(folder) if is_local else None, cuda, args.allow_ungated
        )
        info = matryoshka_info(folder) if is_local else {}
        config = Path(folder) / "sentence_bert_config.json"
        tokens = json.loads(config.read_text()).get("max_seq_length") if config.is_file() else None
        return cls(
            name=name,
            spec=spec,
            folder=folder,
            is_local=is_local,
            dim=declared_dim(folder) or 0,
            trained_dims=info.get("dims", []),
            backend=backend,
            backend_reason=why,
            max_input_tokens=tokens,
            precisions=info.get("precisions", {}),
        )

    def allowed_dims(self, precision_name: str) -> list[int]:
        return precision.allowed_dims(self.precisions, self.backend, precision_name)

    def describe(self) -> dict[str, Any]:
        """The model's entry in GET /v1/models."""
        entry = self.precisions.get("backends", {}).get(self.backend, {})
        by_dim = []
        for d, row in sorted(entry.get("dims", {}).items(), key=lambda kv: -int(kv[0])):
            allowed = {
                p: m["bytes"] for p, m in row.items() if p in precision.PRECISIONS and m["allowed"]
            }
            by_dim.append({"dimensions": int(d), "precisions": allowed})
        return {
            "id": self.name,
            "object": "model",
            "created": 0,
            "owned_by": "matryoshka-sweeps",
            "dimensions": self.dim,
            "matryoshka_dimensions": self.trained_dims,
            "max_input_tokens": self.max_input_tokens,
            "backend": self.backend,
            "backend_reason": self.backend_reason,
            # Per trained dim, the output precisions allowed there and their bytes per vector
            # (trainers/precision.py); empty for a folder whose precisions were never gated.
            "precisions": by_dim,
            "recommended_dimension": entry.get("recommended"),
        }


class ServedModel:
    """A loaded model: its encoder, query prompt and quantizer."""

    def __init__(self, info: ModelInfo, args: ServeArgs, threads: int | None) -> None:
        self.info, self.name, self.args = info, info.name, args
        self.encoder, info.backend, info.backend_reason = backend_choice.load(
            args.backend, info.spec, args.device, args.allow_ungated, threads
        )
        self.dim = info.dim = self.encoder.dim
        info.max_input_tokens = self.encoder.max_seq_length
        self.query_prompt = (
            args.query_prompt
            if args.query_prompt is not None
            else self.encoder.prompts.get("query", "")
        )
        self.quantize = precision.Quantizer(
            precision.load_calibration(info.folder) if info.is_local else None
        )

    def check_output(self, encoding_format: str, dim: int) -> None:
        """APIError (400, naming the dims where it is allowed) unless ``encoding_format``
        passed the gate at ``dim`` through this backend, or the server allows ungated output."""
        wanted = FORMATS[encoding_format]
        if wanted == "float32":
            return
        if wanted in ("int8", "uint8") and self.quantize.calibration is None:
            raise APIError(
                ErrorKind.INVALID_REQUEST,
                f"encoding_format={encoding_format!r}: model {self.name!r} has no int8 "
                "calibration; export it with a sweep, or python -m trainers.export FOLDER "
                "--gate-data PAIRS",
                "encoding_format",
            )
        if self.args.allow_ungated:
            return
        allowed = self.info.allowed_dims(wanted)
        if dim in allowed:
            return
        if not self.info.precisions:
            why = (
                "its output precisions were never gated "
                "(python -m trainers.export FOLDER --gate-data PAIRS)"
            )
        elif allowed:
            row = self.info.precisions["backends"][self.info.backend]["dims"].get(str(dim))
            lost = f" (it loses {row[wanted]['drop']:.4f} MAP@100 there)" if row else ""
            why = f"it passed the quality gate at dims {allowed} only{lost}"
        else:
            why = "it passed the quality gate at no dim"
        raise APIError(
            ErrorKind.INVALID_REQUEST,
            f"encoding_format={encoding_format!r} is not served at {dim} dims by model "
            f"{self.name!r} ({self.info.backend}): {why}; ask for float or an allowed dim, or "
            "start the server with --allow-ungated",
            "encoding_format",
        )

    def output(self, embeddings: np.ndarray, encoding_format: str) -> np.ndarray | None:
        """The quantized vectors of ``embeddings`` (truncated, normalised), or None for float."""
        wanted = FORMATS[encoding_format]
        return None if wanted == "float32" else self.quantize(embeddings, wanted)
