"""The HTTP contract of the embedding service: OpenAI's embeddings API plus `input_type`.

No Ray here: request parsing and validation, the response shape, and the one table that
maps every error kind to its HTTP status, in OpenAI's error envelope:

    {"error": {"message": "...", "type": "invalid_request_error", "param": "dimensions",
               "code": null}}
"""

from __future__ import annotations

import base64
import enum
import json
from typing import Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from trainers.precision import at_dim


class ErrorKind(enum.Enum):
    """Every way a request can fail: HTTP status, OpenAI error type, and the envelope's code.

    The kinds a client should retry (429, 503) come with a Retry-After header.
    """

    INVALID_REQUEST = (400, "invalid_request_error", "invalid_request")
    MALFORMED_JSON = (400, "invalid_request_error", "malformed_json")
    TOO_MANY_INPUTS = (400, "invalid_request_error", "too_many_inputs")
    UNAUTHORIZED = (401, "authentication_error", "unauthorized")
    MODEL_NOT_FOUND = (404, "invalid_request_error", "model_not_found")
    NOT_FOUND = (404, "invalid_request_error", "not_found")
    BODY_TOO_LARGE = (413, "invalid_request_error", "body_too_large")
    OVERLOADED = (429, "rate_limit_error", "overloaded")
    INTERNAL = (500, "server_error", "internal")
    UNAVAILABLE = (503, "server_error", "unavailable")

    @property
    def status(self) -> int:
        return self.value[0]

    @property
    def type(self) -> str:
        return self.value[1]

    @property
    def code(self) -> str:
        return self.value[2]

    @property
    def retry_after_s(self) -> int | None:
        return 1 if self.status in (429, 503) else None


class APIError(Exception):
    def __init__(self, kind: ErrorKind, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.kind, self.message, self.param = kind, message, param

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind.type,
                "param": self.param,
                "code": self.kind.code,
            }
        }

    def headers(self) -> dict[str, str]:
        retry = self.kind.retry_after_s
        return {"retry-after": str(retry)} if retry is not None else {}


class EmbeddingRequest(BaseModel):
    """POST /v1/embeddings. Unknown fields are ignored, as OpenAI's clients send extras."""

    model_config = ConfigDict(extra="ignore")

    input: str | list[str]
    model: str | None = None
    dimensions: int | None = None
    # int8, uint8, binary, ubinary: quantized vectors (integers), where the model folder's
    # gate allows them at the dim asked for (serve/served.py; trainers/precision.py).
    encoding_format: Literal["float", "base64", "int8", "uint8", "binary", "ubinary"] = "float"
    input_type: Literal["query", "document"] | None = (
        None  # extension: "query" adds the query prompt
    )
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _strings_only(cls, value: Any) -> Any:
        # Without this pydantic would coerce nothing but reject with a long union message;
        # OpenAI also accepts token arrays, which this server does not.
        if isinstance(value, list) and any(not isinstance(v, str) for v in value):
            bad = next(i for i, v in enumerate(value) if not isinstance(v, str))
            raise ValueError(
                f"input[{bad}] is {type(value[bad]).__name__}: every input must be a string"
            )
        return value

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


def parse_request(
    body: bytes,
    *,
    max_body_bytes: int,
    max_inputs: int,
    served: dict[str, int],
) -> EmbeddingRequest:
    """Parse and check a request body, or raise APIError naming what is wrong. ``served``:
    each served model's name and dims, the default first; the returned request's ``model`` is
    the one that answers."""
    if len(body) > max_body_bytes:
        raise APIError(
            ErrorKind.BODY_TOO_LARGE,
            f"request body is {len(body)} bytes; the limit is {max_body_bytes}",
        )
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise APIError(ErrorKind.MALFORMED_JSON, f"request body is not valid JSON: {err}") from None
    if not isinstance(payload, dict):
        raise APIError(ErrorKind.INVALID_REQUEST, "request body must be a JSON object")
    try:
        request = EmbeddingRequest.model_validate(payload)
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "missing":
            message = f"'{param}' is required"
        elif first["type"] == "literal_error":
            message = f"{param}={first.get('input')!r}: {message}"
        raise APIError(
            ErrorKind.INVALID_REQUEST, message, param=param.split(".")[0] if param else None
        ) from None
    texts = request.texts
    if not texts:
        raise APIError(
            ErrorKind.INVALID_REQUEST,
            "input is empty: give a string or a non-empty list of strings",
            "input",
        )
    if len(texts) > max_inputs:
        raise APIError(
            ErrorKind.TOO_MANY_INPUTS,
            f"{len(texts)} inputs; at most {max_inputs} per request",
            "input",
        )
    # Only "" is refused: whitespace is text (OpenAI's API embeds it too).
    empty = [i for i, t in enumerate(texts) if not t]
    if empty:
        raise APIError(ErrorKind.INVALID_REQUEST, f"input[{empty[0]}] is an empty string", "input")
    if request.model is not None and request.model not in served:
        names = ", ".join(repr(n) for n in served)
        raise APIError(
            ErrorKind.MODEL_NOT_FOUND,
            f"model {request.model!r} is not served here; served: {names}",
            "model",
        )
    model = request.model if request.model is not None else next(iter(served))
    model_dim = served[model]
    if request.dimensions is not None and not 1 <= request.dimensions <= model_dim:
        raise APIError(
            ErrorKind.INVALID_REQUEST,
            f"dimensions={request.dimensions}: must be between 1 and {model_dim}",
            "dimensions",
        )
    return request.model_copy(update={"model": model})


def truncate(embeddings: np.ndarray, dimensions: int | None) -> np.ndarray:
    """Matryoshka truncation, then re-normalisation so that cosine = dot product (the very
    function the precision gate and the int8 calibration truncate with)."""
    return at_dim(embeddings, dimensions)


def render(
    embeddings: np.ndarray,
    request: EmbeddingRequest,
    model_name: str,
    tokens: int,
    quantized: np.ndarray | None = None,
) -> bytes:
    """The response body as JSON bytes (OpenAI's shape); ``quantized``: the vectors in the
    precision asked for (int8 ... ubinary), sent instead of the float ones.

    orjson writes each float32 vector straight from the array, as the shortest decimal that
    gives back that float32 exactly: 10 us for 384 floats, where one `%.9g` format per vector
    took 80 us and json.dumps of Python floats 225 us. This runs for every request on the
    replica's only core, next to the model (README, Serving figures).
    """
    if not np.isfinite(embeddings).all():
        raise APIError(
            ErrorKind.INTERNAL,
            "the model produced a non-finite embedding (NaN or inf); check the model",
        )
    if quantized is not None:  # int8 ... ubinary: one list of integers per text
        vectors = list(np.ascontiguousarray(quantized))
    elif request.encoding_format == "base64":
        vectors: list[Any] = [
            base64.b64encode(v.astype("<f4").tobytes()).decode() for v in embeddings
        ]
    else:
        # Rows of a C-ordered float32 array: orjson serialises them without a Python float each.
        vectors = list(np.ascontiguousarray(embeddings, dtype=np.float32))
    return orjson.dumps(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)
            ],
            "model": model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
