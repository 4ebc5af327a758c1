"""HTTP in front of the embedding service: one handler per route, one error mapping.

POST /v1/embeddings (the route that carries the load) is answered by ``EmbeddingsRoute``, an
ASGI layer ahead of FastAPI: it skips FastAPI's middleware, routing, dependency solving and
response classes (a Starlette Request and Response per request), time otherwise taken from
the model on a CPU replica. FastAPI answers the rest: GET /v1/models, GET /v1/stats, unknown
paths, and the OpenAPI page at /docs, which documents the POST route too (``openapi``).

Every error of every route leaves through ``error_reply``, in OpenAI's envelope. Which
handler answers each route is in the deployment (serve/deployments.py); starting and stopping
the server is serve/app.py.
"""

# No `from __future__ import annotations` here: FastAPI must see real types (Request) through
# Serve's ingress wrapper, or it takes `request` for a query parameter.
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.exceptions import HTTPException

# Serve reads its settings (HAProxy ingress, its retries, throughput mode, ...) when ray.serve
# is imported and when the Ray this process starts boots: set them first. serve/env.py has each
# one with its reason; a value already in the environment wins.
from serve import env as serve_env  # noqa: E402

serve_env.apply()
from ray import serve  # noqa: E402

from serve.api import APIError, EmbeddingRequest, ErrorKind  # noqa: E402

logger = logging.getLogger("serve")
ROUTE = "/v1/embeddings"
Reply = tuple[int, bytes, dict[str, str]]  # status, JSON body, headers


def error_reply(err: Exception, where: str) -> Reply:
    """The one error mapping. An APIError is the client's: its status and envelope. Anything
    else is a bug: logged with its traceback, answered 500 without its internals."""
    if not isinstance(err, APIError):
        logger.error("unexpected error in %s", where, exc_info=err)
        err = APIError(ErrorKind.INTERNAL, f"internal error: {type(err).__name__}")
    return err.kind.status, orjson.dumps(err.body()), err.headers()


def response(reply: Reply) -> Response:
    status, body, headers = reply
    return Response(body, status, headers, media_type="application/json")


def error_response(err: Exception, where: str) -> Response:
    return response(error_reply(err, where))


async def read_body(receive: Callable[[], Awaitable[dict[str, Any]]]) -> bytes:
    """The request body from ASGI messages; ConnectionError if the client went away."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("the client disconnected before sending its body")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


fastapi_app = FastAPI(title="Matryoshka embeddings", version="1")


@fastapi_app.exception_handler(HTTPException)
async def _http_error(request: Request, err: HTTPException) -> Response:
    # Unknown paths and methods: the same envelope as every other error, with their status.
    kind = ErrorKind.NOT_FOUND if err.status_code == 404 else ErrorKind.INVALID_REQUEST
    _, body, headers = error_reply(
        APIError(kind, f"{request.method} {request.url.path}: {err.detail}"), ""
    )
    return response((err.status_code, body, headers))


@fastapi_app.exception_handler(Exception)
async def _any_error(request: Request, err: Exception) -> Response:
    return error_response(err, f"{request.method} {request.url.path}")


class EmbeddingsRoute:
    """POST /v1/embeddings straight to the replica's EmbeddingService, ahead of FastAPI; other
    methods on the path get 405 in the envelope. Every other path goes on to FastAPI."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        # Serve mounts the app at root_path (the route prefix); the path still includes it.
        path = scope.get("path", "")
        if scope["type"] != "http" or path[len(scope.get("root_path", "")) :] != ROUTE:
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            message = f"{scope['method']} {path}: Method Not Allowed"
            _, body, headers = error_reply(APIError(ErrorKind.INVALID_REQUEST, message), "")
            reply: Reply = (405, body, {**headers, "allow": "POST"})
        else:
            service = serve.get_replica_context().servable_object
            authorization = next(
                (v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None
            )
            try:
                reply = await service.embeddings(authorization, lambda: read_body(receive))
            except ConnectionError:
                return  # the client left before its body arrived: nobody to answer
            except Exception as err:
                reply = error_reply(err, f"POST {ROUTE}")
        status, body, headers = reply
        raw = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        raw += [(k.encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})


fastapi_app.add_middleware(EmbeddingsRoute)


def openapi() -> dict[str, Any]:
    """FastAPI's schema of its own routes, plus POST /v1/embeddings, which it never routes."""
    if fastapi_app.openapi_schema is None:
        schema = get_openapi(
            title=fastapi_app.title, version=fastapi_app.version, routes=fastapi_app.routes
        )
        request = EmbeddingRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(request.pop("$defs", {}), EmbeddingRequest=request)
        schema["paths"][ROUTE] = {
            "post": {
                "summary": "Embeddings of one text or a list (OpenAI's API, with input_type)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/EmbeddingRequest"}
                        }
                    },
                },
                "responses": {
                    "200": {"description": "OpenAI's list of embeddings, with usage"},
                    "default": {"description": "an error in OpenAI's envelope"},
                },
            }
        }
        fastapi_app.openapi_schema = schema
    return fastapi_app.openapi_schema


fastapi_app.openapi = openapi
