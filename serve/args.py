"""The serving apps' typed arguments, and the one home of each default.

serve/config.yaml's ``args:`` and the flags of ``python serve/app.py`` are parsed into these
classes, and the flags take their defaults and help from the fields here, so a default is
written once. No Ray and no HTTP here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from serve.backend_choice import Backend
from trainers.config import Config


class ServeArgs(Config):
    """The embedding app's arguments (`args:` in serve/config.yaml, or the CLI flags)."""

    model: str | list[str] = Field(
        description="sentence-transformers folder, its URI (s3://.../best), or bundled:minilm; "
        "a list serves several behind one endpoint, routed by the request's `model` (the first "
        "is the default)"
    )
    name: str | None = Field(
        None, description="model name clients send; default: the folder's name (one model only)"
    )
    max_loaded_models: int = Field(
        3,
        ge=2,
        description="models one replica keeps loaded at once when several are served: the "
        "first always, the least recently used other unloaded to make room (Serve's model "
        "multiplexing)",
    )
    query_prompt: str | None = Field(
        None, description="prompt for input_type=query; default: the model's own"
    )
    max_inputs: int = Field(256, ge=1, description="most inputs in one request")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="largest request body")
    max_batch_size: int = Field(32, ge=1, description="most texts encoded together across requests")
    batch_wait_timeout_s: float = Field(
        0.0,
        ge=0,
        description="how long a batch waits to fill after a batch of two or more (0: it takes "
        "what has queued, which on a CPU was fastest at 1, 16 and 64 clients)",
    )
    api_key_env: str = Field(
        "EMBEDDINGS_API_KEY", description="env var that, when set, holds the required API key"
    )
    device: str | None = Field(None, description="torch device; default: CUDA if present")
    max_queue_depth: int = Field(
        256,
        ge=1,
        description="requests one replica holds at once (encoding or waiting for a "
        "batch); past it, a request is answered 429 with Retry-After at once",
    )
    backend: Backend = Field(
        "auto",
        description="what encodes: torch, onnx (fp32) or onnx-int8; auto = the fastest backend "
        "that passed the model folder's quality gate (ONNX on a CPU, torch on a CUDA GPU)",
    )
    allow_ungated: bool = Field(
        False,
        description="serve a backend, or an output precision (int8, binary...) at a dim, that "
        "failed (or never had) the quality gate",
    )

    @model_validator(mode="after")
    def _names(self) -> ServeArgs:
        if isinstance(self.model, list):
            if not self.model:
                raise ValueError("model: an empty list; give at least one model folder")
            if self.name is not None and len(self.model) > 1:
                raise ValueError(
                    f"name={self.name!r} names one model, but {len(self.model)} are served: "
                    "each is served under its folder's name; drop name"
                )
        names = self.served_names
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(
                f"models {twice} would be served under one name (their folders' names): "
                "clients could not tell them apart; give folders distinct names"
            )
        return self

    @property
    def models(self) -> list[str]:
        return [self.model] if isinstance(self.model, str) else list(self.model)

    @property
    def served_names(self) -> list[str]:
        """The model names clients send, one per model: ``name`` (one model only), or each
        model folder's name."""
        if self.name is not None:
            return [self.name]
        return [served_name_of(spec) for spec in self.models]

    @property
    def served_name(self) -> str:
        """The default model's name (the first)."""
        return self.served_names[0]


def served_name_of(spec: str) -> str:
    """A model's default name: its folder's (runs/a/best: best; bundled:minilm: minilm)."""
    return Path(spec.removeprefix("bundled:").rstrip("/")).name


class HealthArgs(Config):
    """The health app's arguments: which app and deployment it reports on."""

    app: str = Field("embeddings", description="the Serve application of the embedding service")
    name: str = Field(description="the model name, shown in the answer")
    deployment: str = Field("EmbeddingService", description="the deployment that must be ready")
    ready_timeout_s: float = Field(5.0, gt=0, description="longest /health/ready encode")


def flag(name: str) -> dict[str, Any]:
    """argparse keywords for the ServeArgs field ``name``: its default and its help."""
    field = ServeArgs.model_fields[name]
    return {"default": field.default, "help": field.description}
