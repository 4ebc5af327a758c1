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

from serve.api import APIError, ErrorKind, parse_request, render, truncate
from serve.args import HealthArgs, ServeArgs
from serve.ingress import Reply, fastapi_app
from serve.served import ModelInfo, ServedModel

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
        self.batches = 0
        self.batched_texts = 0
        self.in_flight = 0
        self.rejected = 0
        self._handle = None  # to the deployment itself, made on the first large request
        self.encode.set_max_batch_size(self.args.max_batch_size)
        self.encode.set_batch_wait_timeout_s(self.args.batch_wait_timeout_s)
        # Every served model as its files describe it (GET /v1/models lists them all), and the
        # first (the default) loaded now: in the constructor, not in a background thread. Serve
        # routes no request to a replica before its constructor returns, so a replica that
        # autoscaling adds (or that restarts) takes traffic only once it can answer. With a
        # background load, a new replica took its share of requests while loading and
        # answered them 503 (seen at 16 clients: scale-up from 1 to 2 replicas failed the
        # load test).
        self.catalog = {
            name: ModelInfo.read(spec, name, args)
            for spec, name in zip(args.models, args.served_names, strict=True)
        }
        self.default = ServedModel(next(iter(self.catalog.values())), args, replica_cpus())
        self.name = self.default.name
        self.served_dims = {name: info.dim for name, info in self.catalog.items()}  # parse_request
        # The others load on their first request, through Serve's model multiplexing: at most
        # max_loaded_models - 1 of them per replica, the least recently used unloaded first.
        # (Made here, not with a decorator, because the bound is an argument.)
        self.model_loads = 0  # of models other than the default, on this replica

        async def load(name: str) -> ServedModel:
            self.model_loads += 1
            return await asyncio.to_thread(
                ServedModel, self.catalog[name], self.args, replica_cpus()
            )

        self._load_other = serve.multiplexed(
            max_num_models_per_replica=self.args.max_loaded_models - 1
        )(load)
        encoder = self.default.encoder
        logger.warning(
            "serving %s with the %s backend (%s): %d dims, max %d tokens%s",
            self.default.info.spec,
            self.default.info.backend,
            self.default.info.backend_reason,
            self.default.dim,
            encoder.max_seq_length,
            f"; and on request: {', '.join(list(self.catalog)[1:])}"
            if len(self.catalog) > 1
            else "",
        )

    async def model(self, name: str) -> ServedModel:
        """The loaded model ``name`` (a served one): the default, or one loaded on demand."""
        return self.default if name == self.name else await self._load_other(name)

    @property
    def backend(self) -> str:
        return self.default.info.backend

    def _authorize(self, authorization: str | None) -> None:
        expected = os.environ.get(self.args.api_key_env)
        if expected and authorization != f"Bearer {expected}":
            raise APIError(
                ErrorKind.UNAUTHORIZED,
                "missing or wrong API key: send 'Authorization: Bearer <key>'",
            )

    @serve.batch(**BATCH_DEFAULTS)  # the args' values are set in __init__
    async def encode(self, items: list[tuple[ServedModel, str]]) -> list[Encoded]:
        # Deliberately blocking: while the model runs, new requests queue up and form the next
        # batch. Awaiting an executor here would let each request run alone (batch size 1).
        self.batches += 1
        self.batched_texts += len(items)
        # One encode per model in the batch (several models: each its own texts).
        by_model: dict[int, list[int]] = {}
        for i, (model, _) in enumerate(items):
            by_model.setdefault(id(model), []).append(i)
        out: list[Encoded | None] = [None] * len(items)
        for indices in by_model.values():
            model = items[indices[0]][0]
            # Token counts for `usage` come with the batch's encode: a tokenizer call per
            # request cost time under load (tokenizer threads waking up on a busy CPU:
            # `git show 0250b01`).
            vectors, counts = model.encoder.encode_counted([items[i][1] for i in indices])
            for i, v, n in zip(indices, vectors, counts, strict=True):
                out[i] = Encoded(v, n, len(items))
        # Wait for a batch to fill only while requests arrive together. After a batch of one
        # (a lone client), the next request is encoded at once instead of waiting
        # batch_wait_timeout_s for company that is not coming; the first batch of two or more
        # turns the wait back on. (Serve reads it when the next batch's first request comes.)
        self.encode.set_batch_wait_timeout_s(
            self.args.batch_wait_timeout_s if len(items) > 1 else 0.0
        )
        return out

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
            served=self.served_dims,
        )
        model = await self.model(parsed.model)
        dim = parsed.dimensions or model.dim
        model.check_output(parsed.encoding_format, dim)  # before any encoding
        texts = parsed.texts
        if parsed.input_type == "query" and model.query_prompt:
            texts = [model.query_prompt + t for t in texts]
        if len(texts) == 1:  # the common case, without a task per text
            encoded = [await self.encode((model, texts[0]))]
        elif len(texts) < SHARE_FROM:
            encoded = await self.encode_share(texts, model)
        else:
            # A replica encodes on one core (one 1-CPU replica per core), so a large request
            # alone left the other cores idle: batches of 32 from one client ran at 0.61x of
            # in-process encode on 2 cores (#29). Half goes to the deployment's handle, whose
            # router picks the replica with the fewest requests (usually another one).
            half = len(texts) // 2
            mine, theirs = await asyncio.gather(
                self.encode_share(texts[:half], model), self._elsewhere(texts[half:], model)
            )
            encoded = mine + theirs
        embeddings = truncate(np.stack([e.vector for e in encoded]), parsed.dimensions)
        tokens = sum(e.tokens for e in encoded)
        # X-Batch-Size: the mean size of the batches this request's inputs were encoded in. The
        # load test reads it from every response, so it sees the batches of every replica.
        batch = sum(e.batch_size for e in encoded) / len(encoded)
        headers = {"x-batch-size": f"{batch:g}"}
        trained = model.info.trained_dims
        if trained and parsed.dimensions is not None and parsed.dimensions not in trained:
            headers["x-dimensions-untrained"] = str(parsed.dimensions)
        quantized = model.output(embeddings, parsed.encoding_format)
        return 200, render(embeddings, parsed, model.name, tokens, quantized), headers

    async def encode_share(self, texts: list[str], model: ServedModel | str) -> list[Encoded]:
        """``texts`` through this replica's batcher (a request's, or a share of another
        replica's request, which names its model), joining the batch queue one batch's worth
        at a time: a query that arrives meanwhile waits for one batch of it, not for all its
        texts (256 passages took seconds on one core; tests/serve/test_app.py holds this)."""
        if isinstance(model, str):
            model = await self.model(model)
        encoded, step = [], self.args.max_batch_size
        for i in range(0, len(texts), step):
            encoded += await asyncio.gather(*(self.encode((model, t)) for t in texts[i : i + step]))
        return encoded

    async def _elsewhere(self, texts: list[str], model: ServedModel) -> list[Encoded]:
        """``texts`` encoded by whichever replica Serve's router picks (for a model other than
        the default, preferably one that has it loaded: model multiplexing); here if that
        fails (the replica it picked died): a share never costs the request."""
        try:
            if self._handle is None:
                context = serve.get_replica_context()
                self._handle = serve.get_deployment_handle(context.deployment, context.app_name)
            handle = self._handle
            if model is not self.default:
                handle = handle.options(multiplexed_model_id=model.name)
            return await handle.encode_share.remote(texts, model.name)
        except Exception as err:  # Ray's errors for a dead or unreachable replica vary
            logger.warning(
                "a share of %d texts failed elsewhere (%r): encoding it here", len(texts), err
            )
            return await self.encode_share(texts, model)

    async def probe(self) -> dict[str, Any]:
        """Encode one text through the batcher, as a request would: the readiness check."""
        started = time.perf_counter()
        encoded = await self.encode((self.default, "readiness probe"))
        if not np.isfinite(encoded.vector).all():
            raise APIError(ErrorKind.INTERNAL, "the model produced a non-finite embedding")
        return {"model": self.name, "encode_ms": round((time.perf_counter() - started) * 1000, 1)}

    @fastapi_app.get("/v1/models")
    async def models(self, request: Request) -> Response:
        """Every served model (the default first): dims, backend, the output precisions
        allowed per dim with their bytes per vector, and the recommended dim."""
        self._authorize(request.headers.get("authorization"))
        data = [info.describe() for info in self.catalog.values()]
        return JSONResponse({"object": "list", "data": data})

    @fastapi_app.get("/v1/stats")
    async def stats(self) -> Response:
        """Batches formed by the answering replica (reset when it restarts), its torch threads,
        and how often it loaded a model other than the default (model multiplexing's LRU)."""
        import torch

        return JSONResponse(
            {
                "batches": self.batches,
                "texts": self.batched_texts,
                "mean_batch_size": self.batched_texts / self.batches if self.batches else 0.0,
                "in_flight": self.in_flight,
                "rejected_overloaded": self.rejected,
                "backend": self.backend,
                "model_loads": self.model_loads,
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
