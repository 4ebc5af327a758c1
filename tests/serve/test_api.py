"""The HTTP contract without Ray: the response body serve/api.py renders."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from serve.api import APIError, EmbeddingRequest, ErrorKind, render


def test_float_body_is_openai_shaped_json_that_gives_back_every_float32():
    vectors = np.random.default_rng(0).standard_normal((3, 384)).astype(np.float32)
    vectors[0, :4] = [0.0, -0.0, 1e-12, -3.4e38]  # zeros, tiny and huge magnitudes
    body = json.loads(render(vectors, EmbeddingRequest(input=["a", "b", "c"]), 'my "model"', 17))
    assert body["object"] == "list" and body["model"] == 'my "model"'
    assert body["usage"] == {"prompt_tokens": 17, "total_tokens": 17}
    assert [(d["object"], d["index"]) for d in body["data"]] == [
        ("embedding", 0),
        ("embedding", 1),
        ("embedding", 2),
    ]
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    assert np.array_equal(got, vectors)  # exact, not close: each float32 reads back as itself


def test_base64_body_carries_the_little_endian_float32_bytes():
    vectors = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    body = json.loads(
        render(vectors, EmbeddingRequest(input=["a", "b"], encoding_format="base64"), "m", 2)
    )
    decoded = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in body["data"]]
    assert np.array_equal(np.stack(decoded), vectors)


def test_a_non_finite_embedding_is_a_500_envelope_not_invalid_json():
    vectors = np.ones((1, 8), dtype=np.float32)
    vectors[0, 3] = np.nan
    with pytest.raises(APIError) as raised:
        render(vectors, EmbeddingRequest(input="a"), "m", 1)
    assert raised.value.kind is ErrorKind.INTERNAL and raised.value.kind.status == 500
    assert "non-finite" in raised.value.body()["error"]["message"]


def test_an_unexpected_exception_becomes_a_500_envelope():
    """The app's handler for bugs: a route that raises gets OpenAI's envelope, not text."""
    from fastapi.testclient import TestClient

    from serve.ingress import fastapi_app

    @fastapi_app.get("/_test_raises")
    async def raises():
        raise RuntimeError("boom")

    try:
        reply = TestClient(fastapi_app, raise_server_exceptions=False).get("/_test_raises")
    finally:
        fastapi_app.router.routes = [
            r for r in fastapi_app.router.routes if getattr(r, "path", "") != "/_test_raises"
        ]
    assert reply.status_code == 500
    error = reply.json()["error"]
    assert error["type"] == "server_error" and "RuntimeError" in error["message"]
    assert "boom" not in error["message"]  # internals stay in the server's log


def test_the_openapi_page_documents_the_post_route_that_fastapi_never_routes():
    from fastapi.testclient import TestClient

    from serve.ingress import fastapi_app

    schema = TestClient(fastapi_app).get("/openapi.json").json()
    post = schema["paths"]["/v1/embeddings"]["post"]
    ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    request = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert {"input", "dimensions", "input_type", "encoding_format"} <= set(request["properties"])
