"""The Serve deployments: ``EmbeddingService`` (the model) and ``HealthService`` (/health).

Their builders are what serve/config.yaml's ``import_path`` names; Serve validates ``args:``
into the typed argument classes of serve/args.py:

    eval "$(python -m serve.env)"; serve run serve/config.yaml

HTTP (which route reaches which method, the error envelope) is serve/ingress.py; starting and
stopping a server is serve/app.py.
"""

# No `from __future__ import annotations` here: FastAPI must see real types (Request), and
# Serve reads the builders' argument types to validate `args:` with them.
import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from serve import ingress  # first: it gives Serve its settings before ray.serve is imported

# isort: split
from ray import serve

from serve import backend_choice
from serve.api import APIError, ErrorKind, parse_request, render, truncate
from serve.args import HealthArgs, ServeArgs
from serve.ingress import Reply, fastapi_app

logger = logging.getLogger("serve")
BATCH_DEFAULTS = {
    name: ServeArgs.model_fields[name].default
    for name in ("max_batch_size", "batch_wait_timeout_s")
}


SHARE_FROM = 16  # texts in a request from which half is encoded by another replica


class Encoded(NamedTuple):
    """One text out of the batcher."""

    vector: np.ndarray
    tokens: int
    batch_size: int  # the size of the batch it was encoded in


# Defined above the deployment: @serve.ingress pickles the class (by value) when it is
# decorated, and a module global defined later is then missing in the replica.
def replica_cpus() -> int:
    """The CPUs Ray reserved for this replica (its threads: torch's or ONNX Runtime's)."""
    import ray

    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    except Exception:  # outside a Ray worker (tests that build it in-process)
        cpus = 1.0
    return max(1, round(cpus))


@serve.deployment(ray_actor_options={"num_cpus": 1})
@serve.ingress(fastapi_app)
class EmbeddingService:
    def __init__(self, args: ServeArgs) -> None:
        self.args = args  # validated once, by whoever built the app
        self.name = self.args.served_name
        self.batches = 0
        self.batched_texts = 0
        self.in_flight = 0
        self.rejected = 0
        self._handle = None  # to the deployment itself, made on the first large request
        self.encode.set_max_batch_size(self.args.max_batch_size)
        self.encode.set_batch_wait_timeout_s(self.args.batch_wait_timeout_s)
        # Loaded in the constructor, not in a background thread: Serve routes no request to a
        # replica before its constructor returns, so a replica that autoscaling adds (or that
        # restarts) takes traffic only once it can answer. With a background load, a new
        # replica took its share of requests while loading and answered them 503 (seen at 16
        # clients: scale-up from 1 to 2 replicas failed the load test).
        from trainers.models import matryoshka_info, resolve

        folder, is_local = resolve(self.args.model)
        encoder, self.backend, self.backend_reason = backend_choice.load(
            self.args.backend, folder, self.args.device, self.args.allow_ungated, replica_cpus()
        )
        self.dim = encoder.dim
        # The dims the model was trained on (a sweep's or trainers' export records them); any
        # other `dimensions` is still served, but flagged (README, Serving).
        self.trained_dims: list[int] = matryoshka_info(folder).get("dims", []) if is_local else []
        self.query_prompt = (
            self.args.query_prompt
            if self.args.query_prompt is not None
            else encoder.prompts.get("query", "")
        )
        self.encoder = encoder
        logger.warning(
            "serving %s with the %s backend (%s): %d dims, max %d tokens",
            self.args.model,
            self.backend,
            self.backend_reason,
            self.dim,
            encoder.max_seq_length,
        )

    def _authorize(self, authorization: str | None) -> None:
        expected = os.environ.get(self.args.api_key_env)
        if expected and authorization != f"Bearer {expected}":
            raise APIError(
                ErrorKind.UNAUTHORIZED,
                "missing or wrong API key: send 'Authorization: Bearer <key>'",
            )

    @serve.batch(**BATCH_DEFAULTS)  # the args' values are set in __init__
    async def encode(self, texts: list[str]) -> list[Encoded]:
        # Deliberately blocking: while the model runs, new requests queue up and form the next
        # batch. Awaiting an executor here would let each request run alone (batch size 1).
        self.batches += 1
        self.batched_texts += len(texts)
        # Token counts for `usage` come with the batch's encode: a tokenizer call per request
        # cost time under load (tokenizer threads waking up on a busy CPU: `git show 0250b01`).
        vectors, counts = self.encoder.encode_counted(texts)
        # Wait for a batch to fill only while requests arrive together. After a batch of one
        # (a lone client), the next request is encoded at once instead of waiting
        # batch_wait_timeout_s for company that is not coming; the first batch of two or more
        # turns the wait back on. (Serve reads it when the next batch's first request comes.)
        self.encode.set_batch_wait_timeout_s(
            self.args.batch_wait_timeout_s if len(texts) > 1 else 0.0
        )
        return [Encoded(v, n, len(texts)) for v, n in zip(vectors, counts, strict=True)]

    async def embeddings(
        self, authorization: str | None, read_body: Callable[[], Awaitable[bytes]]
    ) -> Reply:
        """POST /v1/embeddings (serve/ingress.py routes it here): status, JSON body, headers.
        Raises APIError for the client's mistakes, ConnectionError if the client left."""
        self._authorize(authorization)
        # Admission: past max_queue_depth requests on this replica (encoding or waiting for a
        # batch), say so at once instead of letting every client's latency grow unbounded.
        if self.in_flight >= self.args.max_queue_depth:
            self.rejected += 1
            raise APIError(
                ErrorKind.OVERLOADED,
                f"overloaded: this replica already holds {self.in_flight} requests "
                f"(max_queue_depth); retry after the Retry-After seconds",
            )
        self.in_flight += 1
        try:
            return await self._embed(await read_body())
        finally:
            self.in_flight -= 1

    async def _embed(self, body: bytes) -> Reply:
        parsed = parse_request(
            body,
            max_body_bytes=self.args.max_body_bytes,
            max_inputs=self.args.max_inputs,
            model_dim=self.dim,
            served_names=(self.name,),
        )
        texts = parsed.texts
        if parsed.input_type == "query" and self.query_prompt:
            texts = [self.query_prompt + t for t in texts]
        if len(texts) == 1:  # the common case, without a task per text
            encoded = [await self.encode(texts[0])]
        elif len(texts) < SHARE_FROM:
            encoded = await self.encode_share(texts)
        else:
            # A replica encodes on one core (one 1-CPU replica per core), so a large request
            # alone left the other cores idle: batches of 32 from one client ran at 0.61x of
            # in-process encode on 2 cores (#29). Half goes to the deployment's handle, whose
            # router picks the replica with the fewest requests (usually another one).
            half = len(texts) // 2
            mine, theirs = await asyncio.gather(
                self.encode_share(texts[:half]), self._elsewhere(texts[half:])
            )
            encoded = mine + theirs
        embeddings = truncate(np.stack([e.vector for e in encoded]), parsed.dimensions)
        tokens = sum(e.tokens for e in encoded)
        # X-Batch-Size: the mean size of the batches this request's inputs were encoded in. The
        # load test reads it from every response, so it sees the batches of every replica.
        batch = sum(e.batch_size for e in encoded) / len(encoded)
        headers = {"x-batch-size": f"{batch:g}"}
        if (
            self.trained_dims
            and parsed.dimensions is not None
            and parsed.dimensions not in self.trained_dims
        ):
            headers["x-dimensions-untrained"] = str(parsed.dimensions)
        return 200, render(embeddings, parsed, self.name, tokens), headers

    async def encode_share(self, texts: list[str]) -> list[Encoded]:
        """``texts`` through this replica's batcher (a request's, or a share of another
        replica's request), joining the batch queue one batch's worth at a time: a query that
        arrives meanwhile waits for one batch of it, not for all its texts (256 passages took
        seconds on one core; tests/serve/test_app.py holds this)."""
        encoded, step = [], self.args.max_batch_size
        for i in range(0, len(texts), step):
            encoded += await asyncio.gather(*(self.encode(t) for t in texts[i : i + step]))
        return encoded

    async def _elsewhere(self, texts: list[str]) -> list[Encoded]:
        """``texts`` encoded by whichever replica Serve's router picks; here if that fails (the
        replica it picked died): a share never costs the request."""
        try:
            if self._handle is None:
                context = serve.get_replica_context()
                self._handle = serve.get_deployment_handle(context.deployment, context.app_name)
            return await self._handle.encode_share.remote(texts)
        except Exception as err:  # Ray's errors for a dead or unreachable replica vary
            logger.warning(
                "a share of %d texts failed elsewhere (%r): encoding it here", len(texts), err
            )
            return await self.encode_share(texts)

    async def probe(self) -> dict[str, Any]:
        """Encode one text through the batcher, as a request would: the readiness check."""
        started = time.perf_counter()
        encoded = await self.encode("readiness probe")
        if not np.isfinite(encoded.vector).all():
            raise APIError(ErrorKind.INTERNAL, "the model produced a non-finite embedding")
        return {"model": self.name, "encode_ms": round((time.perf_counter() - started) * 1000, 1)}

    @fastapi_app.get("/v1/models")
    async def models(self, request: Request) -> Response:
        self._authorize(request.headers.get("authorization"))
        model = {
            "id": self.name,
            "object": "model",
            "created": 0,
            "owned_by": "matryoshka-sweeps",
            "dimensions": self.dim,
            "matryoshka_dimensions": self.trained_dims,
            "max_input_tokens": self.encoder.max_seq_length,
            "backend": self.backend,
            "backend_reason": self.backend_reason,
        }
        return JSONResponse({"object": "list", "data": [model]})

    @fastapi_app.get("/v1/stats")
    async def stats(self) -> Response:
        """Batches formed by the answering replica (reset when it restarts), its torch threads."""
        import torch

        return JSONResponse(
            {
                "batches": self.batches,
                "texts": self.batched_texts,
                "mean_batch_size": self.batched_texts / self.batches if self.batches else 0.0,
                "in_flight": self.in_flight,
                "rejected_overloaded": self.rejected,
                "backend": self.backend,
                "torch_threads": torch.get_num_threads(),
            }
        )


@serve.deployment(ray_actor_options={"num_cpus": 0}, num_replicas=1)
class HealthService:
    """GET /health and GET /health/ready, answered by a model-less app of their own.

    It is up within a second of the deploy, so a probe never sees "no route" (404): until a
    replica of the embedding service has loaded its model, /health is 503 with the error
    envelope and Retry-After, then 200. /health/ready also encodes one text through the
    service, the way a request would.
    """

    STATUS_TTL_S = 0.5  # one controller query per half second, however often probes come

    def __init__(self, args: HealthArgs) -> None:
        self.args = args
        self._running, self._checked = 0, float("-inf")

    async def _replicas_running(self) -> int:
        if time.monotonic() - self._checked > self.STATUS_TTL_S:
            status = await asyncio.to_thread(serve.status)  # a blocking controller call
            app = status.applications.get(self.args.app)
            deployment = app.deployments.get(self.args.deployment) if app is not None else None
            self._running = deployment.replica_states.get("RUNNING", 0) if deployment else 0
            self._checked = time.monotonic()
        return self._running

    async def __call__(self, request: Request) -> Response:
        running = await self._replicas_running()
        if not running:
            message = f"{self.args.name}: no replica has loaded the model yet"
            return ingress.error_response(APIError(ErrorKind.UNAVAILABLE, message), "")
        body: dict[str, Any] = {"status": "ok", "model": self.args.name, "replicas": running}
        if request.url.path.rstrip("/").endswith("/ready"):
            handle = serve.get_app_handle(self.args.app)
            try:
                probe = await asyncio.wait_for(handle.probe.remote(), self.args.ready_timeout_s)
            except Exception as err:  # any failure means "not ready", said why
                message = f"{self.args.name}: encoding failed: {err!r}"[:300]
                return ingress.error_response(APIError(ErrorKind.UNAVAILABLE, message), "")
            body.update(status="ready", encode_ms=probe["encode_ms"])
        return JSONResponse(body)


def build_app(args: ServeArgs):
    """The embedding app (`import_path: serve.deployments:build_app` in serve/config.yaml)."""
    return EmbeddingService.bind(args)


def build_health_app(args: HealthArgs):
    """The health app (`import_path: serve.deployments:build_health_app`)."""
    return HealthService.bind(args)
