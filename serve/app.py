"""An autoscaled Ray Serve embedding endpoint, OpenAI-compatible, with Matryoshka `dimensions`.

    python serve/app.py --model runs/local/best        # foreground on 127.0.0.1:8000, Ctrl-C stops
    python serve/app.py --model runs/local/best --host 0.0.0.0 --port 9000
    eval "$(python -m serve.env)"; serve run serve/config.yaml   # the YAML with Serve's CLI

    curl -s 127.0.0.1:8000/v1/embeddings -H 'Content-Type: application/json' \\
        -d '{"input": ["a text editor"], "dimensions": 64}'

Routes: POST /v1/embeddings, GET /v1/models, GET /v1/stats (achieved batch sizes, requests in
flight and refused), and, from a small app of their own, GET /health (503 until a replica has
loaded the model, then 200) and GET /health/ready (also encodes one text). Ctrl-C or SIGTERM
stops the server in a few seconds and leaves no Ray process behind.
Autoscaling and replica options live in serve/config.yaml, which both ways of starting read.
Any sentence-transformers folder works as the model; nothing from sweeps/ is needed.
"""

# No `from __future__ import annotations` here: FastAPI must see real types (Request) through
# Serve's ingress wrapper, or it takes `request` for a query parameter.
import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import Field
from starlette.exceptions import HTTPException

# Serve reads its settings (HAProxy ingress, its retries, throughput mode, ...) when ray.serve
# is imported and when the Ray this process starts boots: set them first. serve/env.py has each
# one with its measurement; a value already in the environment wins.
from serve import env as serve_env  # noqa: E402

serve_env.apply()
from ray import serve  # noqa: E402

from serve import backends  # noqa: E402
from serve.api import APIError, ErrorKind, parse_request, render, truncate  # noqa: E402
from serve.backends import Backend  # noqa: E402
from trainers import cli  # noqa: E402
from trainers.config import Config, parse  # noqa: E402
from trainers.errors import ModelError  # noqa: E402

logger = logging.getLogger("serve")
CONFIG = Path(__file__).resolve().parent / "config.yaml"


class ServeArgs(Config):
    """The app's typed arguments (`args:` in serve/config.yaml, or the CLI flags)."""

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
        description="torch, onnx (fp32) or onnx-int8; auto = the fastest backend that passed the "
        "model folder's quality gate (ONNX on a CPU, torch on a CUDA GPU)",
    )
    allow_ungated: bool = Field(
        False, description="serve a backend that failed (or never had) the quality gate"
    )

    @property
    def served_name(self) -> str:
        """The model name clients send: ``name``, or the model folder's name."""
        return self.name or Path(self.model.removeprefix("bundled:")).name


fastapi_app = FastAPI(title="Matryoshka embeddings", version="1")


@fastapi_app.exception_handler(APIError)
async def _api_error(request: Request, err: APIError) -> JSONResponse:
    return error_response(err)


@fastapi_app.exception_handler(HTTPException)
async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
    # Unknown paths and methods: the same envelope as every other error.
    kind = ErrorKind.NOT_FOUND if err.status_code == 404 else ErrorKind.INVALID_REQUEST
    return JSONResponse(
        APIError(kind, f"{request.method} {request.url.path}: {err.detail}").body(),
        status_code=err.status_code,
    )


@fastapi_app.exception_handler(Exception)
async def _unexpected(request: Request, err: Exception) -> JSONResponse:
    # A bug, not the client's fault: logged with its traceback, answered in OpenAI's envelope.
    logger.exception("unexpected error in %s %s", request.method, request.url.path)
    return JSONResponse(
        APIError(ErrorKind.INTERNAL, f"internal error: {type(err).__name__}").body(),
        status_code=500,
    )


class EmbeddingsFastPath:
    """POST /v1/embeddings straight to the replica's EmbeddingService, ahead of FastAPI.

    The one route that carries the load skips FastAPI's middleware, routing, dependency
    solving and response classes (a Starlette Request and Response per request): at 16
    clients on 2 cores they were ~3% of a 1-CPU replica's samples, time taken from the model;
    Serve / in-process encode went from 0.845 to 0.866 with this path (README, Serving
    figures). Every other route, and every other method on this path, goes through FastAPI
    as before; errors here get the same envelope as FastAPI's handlers give.
    """

    ROUTE = "/v1/embeddings"

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        # Serve mounts the app at root_path (the route prefix); the path still includes it.
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"][len(scope.get("root_path", "")) :] != self.ROUTE
        ):
            await self.app(scope, receive, send)
            return
        service = serve.get_replica_context().servable_object
        try:
            status, body, headers = await service.answer_embeddings(scope, receive)
        except ConnectionError:
            return  # the client left before its body arrived: nobody to answer
        raw = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        raw += [(k.encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})


fastapi_app.add_middleware(EmbeddingsFastPath)


async def read_body(receive) -> bytes:
    """The request body from ASGI messages; ConnectionError if the client went away."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("the client disconnected before sending its body")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


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
        self.encode.set_max_batch_size(self.args.max_batch_size)
        self.encode.set_batch_wait_timeout_s(self.args.batch_wait_timeout_s)
        # Loaded in the constructor, not in a background thread: Serve routes no request to a
        # replica before its constructor returns, so a replica that autoscaling adds (or that
        # restarts) takes traffic only once it can answer. With a background load, a new
        # replica took its share of requests while loading and answered them 503 (seen at 16
        # clients: scale-up from 1 to 2 replicas failed the load test).
        from trainers.models import matryoshka_info, resolve

        folder, is_local = resolve(self.args.model)
        encoder, self.backend, self.backend_reason = backends.load(
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

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def encode(self, texts: list[str]) -> list[tuple[np.ndarray, int, int]]:
        # Deliberately blocking: while the model runs, new requests queue up and form the next
        # batch. Awaiting an executor here would let each request run alone (batch size 1).
        self.batches += 1
        self.batched_texts += len(texts)
        # Token counts for `usage` come with the batch's encode: a tokenizer call per request
        # cost ~0.7 ms under 16 clients (tokenizer threads waking up on a busy CPU).
        vectors, counts = self.encoder.encode_counted(texts)
        # Wait for a batch to fill only while requests arrive together. After a batch of one
        # (a lone client), the next request is encoded at once instead of waiting
        # batch_wait_timeout_s for company that is not coming; the first batch of two or more
        # turns the wait back on. (Serve reads it when the next batch's first request comes.)
        self.encode.set_batch_wait_timeout_s(
            self.args.batch_wait_timeout_s if len(texts) > 1 else 0.0
        )
        return [(v, n, len(texts)) for v, n in zip(vectors, counts, strict=True)]

    @fastapi_app.post("/v1/embeddings")
    async def embeddings(self, request: Request) -> Response:
        """POST /v1/embeddings through FastAPI: its OpenAPI entry, its 405 for other methods,
        and the answer wherever EmbeddingsFastPath does not run first."""
        status, body, headers = await self.answer_embeddings(request.scope, request.receive)
        return Response(body, status, headers, media_type="application/json")

    async def answer_embeddings(self, scope, receive) -> tuple[int, bytes, dict[str, str]]:
        """POST /v1/embeddings (from EmbeddingsFastPath): status, JSON body and headers."""
        try:
            authorization = next(
                (v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None
            )
            self._authorize(authorization)
            # Admission: past max_queue_depth requests on this replica (encoding or waiting for
            # a batch), say so at once instead of letting every client's latency grow unbounded.
            if self.in_flight >= self.args.max_queue_depth:
                self.rejected += 1
                raise APIError(
                    ErrorKind.OVERLOADED,
                    f"overloaded: this replica already holds {self.in_flight} requests "
                    f"(max_queue_depth); retry after the Retry-After seconds",
                )
            self.in_flight += 1
            try:
                return await self._embed(await read_body(receive))
            finally:
                self.in_flight -= 1
        except APIError as err:
            return err.kind.status, orjson.dumps(err.body()), err.headers()
        except ConnectionError:
            raise  # the client left: nothing to answer (the caller drops it)
        except Exception as err:  # a bug: logged, answered like _unexpected
            logger.exception("unexpected error in POST %s", EmbeddingsFastPath.ROUTE)
            body = APIError(ErrorKind.INTERNAL, f"internal error: {type(err).__name__}").body()
            return 500, orjson.dumps(body), {}

    async def _embed(self, body: bytes) -> tuple[int, bytes, dict[str, str]]:
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
        else:
            encoded = await asyncio.gather(*(self.encode(t) for t in texts))
        embeddings = truncate(np.stack([v for v, _, _ in encoded]), parsed.dimensions)
        tokens = sum(n for _, n, _ in encoded)
        # X-Batch-Size: the mean size of the batches this request's inputs were encoded in. The
        # load test reads it from every response, so it sees the batches of every replica.
        batch = sum(b for _, _, b in encoded) / len(encoded)
        headers = {"x-batch-size": f"{batch:g}"}
        if (
            self.trained_dims
            and parsed.dimensions is not None
            and parsed.dimensions not in self.trained_dims
        ):
            headers["x-dimensions-untrained"] = str(parsed.dimensions)
        return 200, render(embeddings, parsed, self.name, tokens), headers

    async def probe(self) -> dict[str, Any]:
        """Encode one text through the batcher, as a request would: the readiness check."""
        started = time.perf_counter()
        vector, _, _ = await self.encode("readiness probe")
        if not np.isfinite(vector).all():
            raise APIError(ErrorKind.INTERNAL, "the model produced a non-finite embedding")
        return {"model": self.name, "encode_ms": round((time.perf_counter() - started) * 1000, 1)}

    @fastapi_app.get("/v1/models")
    async def models(self, request: Request) -> dict[str, Any]:
        self._authorize(request.headers.get("authorization"))
        return {
            "object": "list",
            "data": [
                {
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
            ],
        }

    @fastapi_app.get("/v1/stats")
    async def stats(self) -> dict[str, Any]:
        """Batches formed by the answering replica (reset when it restarts), its torch threads."""
        import torch

        return {
            "batches": self.batches,
            "texts": self.batched_texts,
            "mean_batch_size": self.batched_texts / self.batches if self.batches else 0.0,
            "in_flight": self.in_flight,
            "rejected_overloaded": self.rejected,
            "backend": self.backend,
            "torch_threads": torch.get_num_threads(),
        }


class HealthArgs(Config):
    """The health app's arguments: which app and deployment it reports on."""

    app: str = Field("embeddings", description="the Serve application of the embedding service")
    name: str = Field(description="the model name, shown in the answer")
    deployment: str = Field("EmbeddingService", description="the deployment that must be ready")
    ready_timeout_s: float = Field(5.0, gt=0, description="longest /health/ready encode")


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

    async def __call__(self, request: Request) -> JSONResponse:
        running = await self._replicas_running()
        if not running:
            return error_response(
                APIError(
                    ErrorKind.UNAVAILABLE, f"{self.args.name}: no replica has loaded the model yet"
                )
            )
        body: dict[str, Any] = {"status": "ok", "model": self.args.name, "replicas": running}
        if request.url.path.rstrip("/").endswith("/ready"):
            handle = serve.get_app_handle(self.args.app)
            try:
                probe = await asyncio.wait_for(handle.probe.remote(), self.args.ready_timeout_s)
            except Exception as err:  # any failure means "not ready", said why
                return error_response(
                    APIError(
                        ErrorKind.UNAVAILABLE, f"{self.args.name}: encoding failed: {err!r}"[:300]
                    )
                )
            body.update(status="ready", encode_ms=probe["encode_ms"])
        return JSONResponse(body)


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.kind.status, headers=err.headers())


def deployment_options(path: Path = CONFIG) -> dict[str, Any]:
    """The deployment's options (autoscaling, replica resources) from serve/config.yaml."""
    config = yaml.safe_load(path.read_text())
    for app in config.get("applications", []):
        for deployment in app.get("deployments", []):
            if deployment.get("name") == "EmbeddingService":
                return {k: v for k, v in deployment.items() if k != "name"}
    return {}


def per_core_options() -> dict[str, Any]:
    """serve/config.yaml's deployment with a fixed count of 1-CPU replicas, one per core.

    The shape the load test's --start and benchmarks/serving.py measure on one machine. A
    1-CPU replica runs one torch thread, and one thread's encode rate is flat from batch 4 on
    (MiniLM on this 2-core machine: 144 texts/s at batch 4, 156 at 16), so two such replicas
    each batching half of the clients lose little to smaller batches, while each one's HTTP work
    (parsing, JSON, Serve's bookkeeping: ~1 ms a request) no longer stalls a model that spans
    both cores. At 16 clients: one 2-CPU replica 0.57x of in-process batch-16 encode, two
    1-CPU replicas 0.68x-0.76x (README, Serving).
    """
    options = deployment_options()
    options.pop("autoscaling_config", None)
    options.update(num_replicas=os.cpu_count() or 1, ray_actor_options={"num_cpus": 1})
    return options


def build_app(args: dict[str, Any]):
    """Serve's app builder (`import_path: serve.app:build_app` in serve/config.yaml)."""
    return EmbeddingService.bind(parse(ServeArgs, args, where="args"))


def build_health_app(args: dict[str, Any]):
    """The health app's builder (`import_path: serve.app:build_health_app`)."""
    return HealthService.bind(parse(HealthArgs, args, where="args"))


def start(
    args: ServeArgs,
    host: str = "127.0.0.1",
    port: int = 8000,
    options: dict[str, Any] | None = None,
    name: str = "embeddings",
    route_prefix: str = "/",
    wait: bool = True,
):
    """Deploy on the current (or a new local) Ray: the health app at <route_prefix>health, then
    the embedding service at <route_prefix>. With ``wait`` it returns once the service runs."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    # First: /health answers 503 while the model loads, instead of "no route" (404).
    health = HealthService.bind(HealthArgs(app=name, name=args.served_name))
    serve.run(health, name=f"{name}-health", route_prefix=route_prefix.rstrip("/") + "/health")
    deployment = EmbeddingService.options(**(deployment_options() if options is None else options))
    target = serve.RunTarget(deployment.bind(args), name=name, route_prefix=route_prefix)
    return serve.run_many([target], wait_for_applications_running=wait)[0]


def wait_healthy(url: str, timeout_s: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url}/health did not turn 200 within {timeout_s:.0f}s")


STOP_DEADLINE_S = 4.0  # from the start of the stop to the end of the process, at most


def stop(deadline_s: float | None = None) -> None:
    """Stop Serve and the private Ray it ran on, leaving no Ray process behind, in seconds.

    No serve.shutdown(): it drains each replica for Serve's direct-ingress draining period
    (30 s) first, which is what made Ctrl-C take 34 s. Stopping the private Ray ends every
    replica and request with it; then whatever outlived its raylet (its agents, HAProxy) is
    ended too. ``deadline_s``: if the process still runs then, it kills what is left and exits
    (cli.bound_the_stop).
    """
    import ray

    processes = cli.ray_descendants()
    if deadline_s is not None:
        cli.bound_the_stop(deadline_s, processes)
    ray.shutdown()
    left = cli.reap(processes)
    if left:
        logger.info("ended %d process(es) that outlived Ray: %s", len(left), "; ".join(left))


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        required=True,
        help="model folder, e.g. runs/local/best, its URI (s3://.../best), or bundled:minilm",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="bind address (default: %(default)s, this machine only)"
    )
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--name", help="model name clients send (default: the folder's name)")
    parser.add_argument(
        "--backend",
        choices=("auto", "torch", "onnx", "onnx-int8"),
        default="auto",
        help="what encodes: auto (default) = the fastest backend that passed the model folder's "
        "quality gate: ONNX on a CPU, torch on a CUDA GPU",
    )
    parser.add_argument(
        "--allow-ungated",
        action="store_true",
        help="serve --backend although it failed (or never had) the quality gate",
    )
    args = parser.parse_args(argv)
    cli.setup_logging()
    if (
        not args.model.startswith("bundled:")
        and "://" not in args.model
        and not Path(args.model).is_dir()
    ):
        raise ModelError(f"--model {args.model}: no such folder")
    serve_args = ServeArgs(
        model=str(Path(args.model).resolve()) if Path(args.model).is_dir() else args.model,
        name=args.name,
        backend=args.backend,
        allow_ungated=args.allow_ungated,
    )
    url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"
    import httpx
    import ray

    try:
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        # After ray.init, whose own SIGTERM handler exits at once: SIGTERM (docker stop,
        # systemd, Kubernetes) now stops the server the way Ctrl-C does, through `finally`.
        with cli.terminate_as_interrupt():
            start(serve_args, args.host, args.port)
            wait_healthy(url)
            key = os.environ.get(serve_args.api_key_env)
            auth = {"Authorization": f"Bearer {key}"} if key else {}
            models = httpx.get(f"{url}/v1/models", headers=auth, timeout=10).json()
            model = models["data"][0]
            print(
                f"serving {args.model} at {url}/v1/embeddings with the {model['backend']} "
                f"backend ({model['backend_reason']}); Ctrl-C to stop",
                flush=True,
            )
            while True:
                time.sleep(1)
    except KeyboardInterrupt:
        print("shutting down", flush=True)
    finally:
        cli.ignore_stop_signals()  # a second Ctrl-C must not leave half a Ray behind
        # Normally 2-3 s here. A stop that waits on something that never comes is ended at
        # the deadline (its threads' stacks printed, Ray's processes killed), within the 5 s a
        # service manager allows.
        stop(deadline_s=STOP_DEADLINE_S)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python serve/app.py`` and ``matryoshka-serve``."""
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
