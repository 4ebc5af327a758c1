"""The serving apps' typed arguments, and the one home of each default.

serve/config.yaml's ``args:`` and the flags of ``python serve/app.py`` are parsed into these
classes, and the flags take their defaults and help from the fields here, so a default is
written once. No Ray and no HTTP here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from serve.backend_choice import Backend
from trainers.config import Config


class ServeArgs(Config):
    """The embedding app's arguments (`args:` in serve/config.yaml, or the CLI flags)."""

    model: str = Field(
        description="sentence-transformers folder, its URI (s3://.../best), or bundled:minilm"
    )
    name: str | None = Field(
        None, description="model name clients send; default: the folder's name"
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
        False, description="serve a backend that failed (or never had) the quality gate"
    )

    @property
    def served_name(self) -> str:
        """The model name clients send: ``name``, or the model folder's name."""
        return self.name or Path(self.model.removeprefix("bundled:")).name


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
