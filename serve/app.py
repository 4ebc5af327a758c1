"""An autoscaled Ray Serve embedding endpoint, OpenAI-compatible, with Matryoshka `dimensions`.

    python serve/app.py --model runs/local/best        # foreground on 127.0.0.1:8000, Ctrl-C stops
    python serve/app.py --model runs/local/best --host 0.0.0.0 --port 9000
    python serve/app.py --model runs/a/best --model runs/b/best  # several: the request's model
    python serve/app.py rollout --model runs/new/best  # replace the model, no failed request
    eval "$(python -m serve.env)"; serve run serve/config.yaml   # the YAML with Serve's CLI

    curl -s 127.0.0.1:8000/v1/embeddings -H 'Content-Type: application/json' \\
        -d '{"input": ["a text editor"], "dimensions": 64}'

Routes: POST /v1/embeddings, GET /v1/models, GET /v1/stats (achieved batch sizes, requests in
flight and refused), GET /docs (OpenAPI), and, from a small app of their own, GET /health (503
until a replica has loaded the model, then 200) and GET /health/ready (also encodes one text).
Ctrl-C or SIGTERM stops the server in a few seconds and leaves no Ray process behind.
Autoscaling and replica options live in serve/config.yaml, which both ways of starting read.
Any sentence-transformers folder works as the model; nothing from sweeps/ is needed.

This module starts and stops the server; the deployments are serve/deployments.py, HTTP is
serve/ingress.py, the arguments and their defaults serve/args.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from serve import deployments  # first: it gives Serve its settings before Ray starts

# isort: split
from ray import serve

from serve.args import HealthArgs, ServeArgs, flag
from trainers import cli, storage
from trainers.errors import ModelError

logger = logging.getLogger("serve")
CONFIG = Path(__file__).resolve().parent / "config.yaml"


def deployment_options(path: Path = CONFIG) -> dict[str, Any]:
    """The deployment's options (autoscaling, replica resources) from serve/config.yaml."""
    config = yaml.safe_load(path.read_text())
    for app in config.get("applications", []):
        for deployment in app.get("deployments", []):
            if deployment.get("name") == "EmbeddingService":
                return {k: v for k, v in deployment.items() if k != "name"}
    return {}


def machine_options(replicas: int = 1) -> dict[str, Any]:
    """serve/config.yaml's deployment as ``replicas`` fixed replicas that share every core of
    this machine between them (one replica: its encoder runs a thread per core)."""
    cores = os.cpu_count() or 1
    options = deployment_options()
    options.pop("autoscaling_config", None)
    options.update(num_replicas=replicas, ray_actor_options={"num_cpus": max(1, cores // replicas)})
    return options


def per_core_options() -> dict[str, Any]:
    """serve/config.yaml's deployment as a fixed 1-CPU replica per core: the shape the load
    test's --shape per-core and benchmarks/serving.py measure on one machine."""
    return machine_options(replicas=os.cpu_count() or 1)


def filled_options(cpus: float) -> dict[str, Any]:
    """serve/config.yaml's deployment, with at least as many replicas from the start as the
    ``cpus`` of the Ray it starts on can hold (within max_replicas): the machine is used from
    the first request instead of after autoscaling's upscale delay. On a 2-core machine, one
    1-CPU replica under 16 clients ran one core at ~86% while the other idled (#29)."""
    options = deployment_options()
    autoscaling = options.get("autoscaling_config")
    per_replica = options.get("ray_actor_options", {}).get("num_cpus", 1) or 1
    if autoscaling:
        fits = max(1, int(cpus // per_replica))
        floor = min(autoscaling.get("max_replicas", fits), fits)
        autoscaling = {
            **autoscaling,
            "min_replicas": max(autoscaling.get("min_replicas", 1), floor),
        }
        options["autoscaling_config"] = autoscaling
    return options


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
    health = deployments.build_health_app(HealthArgs(app=name, name=args.served_name))
    serve.run(health, name=f"{name}-health", route_prefix=route_prefix.rstrip("/") + "/health")
    if options is None:  # the CPUs this Ray has left for replicas (the health app takes none)
        options = filled_options(ray.available_resources().get("CPU", 1.0))
    service = deployments.EmbeddingService.options(**options)
    target = serve.RunTarget(service.bind(args), name=name, route_prefix=route_prefix)
    return serve.run_many([target], wait_for_applications_running=wait)[0]


def rollout(
    args: ServeArgs,
    address: str = "auto",
    name: str = "embeddings",
    route_prefix: str = "/",
    options: dict[str, Any] | None = None,
) -> None:
    """Replace the model(s) of a running server (started by ``python serve/app.py`` or
    ``start``) on the Ray at ``address``, without a failed request: Serve's rolling update
    starts replicas of the new model and stops the old ones only after they finished what they
    hold, while HAProxy sends each request to a replica that is up (and replays one whose
    replica went away: serve/env.py). Responses name the model that encoded them, so clients
    see the switch. Returns once every replica serves the new model."""
    import ray

    if not ray.is_initialized():
        # A local Ray (what `python serve/app.py` starts) turns on token authentication and
        # keeps its token in ~/.ray/auth_token; a driver that joins it sends the token only
        # in token mode, which Ray 2.60 does not turn on by itself when it joins (the join
        # failed with InvalidAuthToken). Ray's own rule: token mode where a token exists and
        # RAY_AUTH_MODE is not set.
        try:
            from ray._private.authentication import authentication_token_setup as auth

            auth.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        except (ImportError, AttributeError):  # another Ray: its own defaults
            pass
        ray.init(address=address, log_to_driver=False)
    if name not in serve.status().applications:
        raise ModelError(
            f"no embedding service {name!r} runs on the Ray at {address}: start one first "
            "(python serve/app.py --model ...)"
        )
    if options is None:  # start()'s shape, from every CPU of the cluster (replicas hold them now)
        options = filled_options(ray.cluster_resources().get("CPU", 1.0))
    service = deployments.EmbeddingService.options(**options)
    target = serve.RunTarget(service.bind(args), name=name, route_prefix=route_prefix)
    serve.run_many([target], wait_for_applications_running=True)


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


def stop(deadline_s: float | None = None) -> None:
    """Stop Serve and the private Ray it ran on, leaving no Ray process behind, in seconds.

    No serve.shutdown(): it drains each replica for Serve's direct-ingress draining period
    (30 s) first, which is what made Ctrl-C take 34 s. Stopping the private Ray ends every
    replica and request with it (cli.stop_ray, which also ends what outlived the raylet).
    """
    import ray

    left = cli.stop_ray(ray.shutdown, deadline_s)
    if left:
        logger.info("ended %d process(es) that outlived Ray: %s", len(left), "; ".join(left))


def serve_args_of(args: argparse.Namespace) -> ServeArgs:
    """The app's arguments from the flags: each --model checked, local folders made absolute
    (the replicas may not share this process's working directory)."""
    models = []
    for spec in args.model:
        if spec.startswith("bundled:") or storage.is_uri(spec):
            models.append(spec)
        elif Path(spec).is_dir():
            models.append(str(Path(spec).resolve()))
        else:
            raise ModelError(f"--model {spec}: no such folder")
    return ServeArgs(
        model=models[0] if len(models) == 1 else models,
        name=args.name,
        backend=args.backend,
        allow_ungated=args.allow_ungated,
    )


def _rollout_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python serve/app.py rollout",
        description="Replace the served model(s) of a running server by a new export, with no "
        "failed request: python serve/app.py rollout --model runs/local/best",
    )
    parser.add_argument("--model", required=True, action="append", help=flag("model")["help"])
    parser.add_argument("--name", **flag("name"))
    parser.add_argument(
        "--backend", choices=("auto", "torch", "onnx", "onnx-int8"), **flag("backend")
    )
    parser.add_argument("--allow-ungated", action="store_true", help=flag("allow_ungated")["help"])
    parser.add_argument(
        "--address",
        default="auto",
        help="the server's Ray (it prints it at start; default: %(default)s, the one on this "
        "machine)",
    )
    parser.add_argument("--app", default="embeddings", help="the Serve application to update")
    parser.add_argument("--route-prefix", default="/", help="its route prefix")
    args = parser.parse_args(argv)
    cli.setup_logging()
    serve_args = serve_args_of(args)
    started = time.perf_counter()
    rollout(serve_args, args.address, args.app, args.route_prefix)
    print(
        f"rolled out {', '.join(serve_args.served_names)} in {time.perf_counter() - started:.0f}s",
        flush=True,
    )
    return 0


def _main(argv: list[str]) -> int:
    if argv[:1] == ["rollout"]:
        return _rollout_main(argv[1:])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        required=True,
        action="append",
        help=flag("model")["help"] + "; repeat --model to serve several",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="bind address (default: %(default)s, this machine only)"
    )
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--name", **flag("name"))
    parser.add_argument(
        "--backend", choices=("auto", "torch", "onnx", "onnx-int8"), **flag("backend")
    )
    parser.add_argument("--allow-ungated", action="store_true", help=flag("allow_ungated")["help"])
    args = parser.parse_args(argv)
    cli.setup_logging()
    serve_args = serve_args_of(args)
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
            for spec, model in zip(args.model, models["data"], strict=True):
                print(
                    f"serving {spec} as {model['id']!r} at {url}/v1/embeddings with the "
                    f"{model['backend']} backend ({model['backend_reason']})",
                    flush=True,
                )
            address = ray.get_runtime_context().gcs_address
            print(
                f"Ctrl-C to stop; to replace the model without a failed request: python "
                f"serve/app.py rollout --address {address} --model NEW_FOLDER",
                flush=True,
            )
            while True:
                time.sleep(1)
    except KeyboardInterrupt:
        print("shutting down", flush=True)
    finally:
        cli.ignore_stop_signals()  # a second Ctrl-C must not leave half a Ray behind
        # A stop that waits on something that never comes is ended at the deadline (its
        # threads' stacks printed, Ray's processes killed), within a service manager's 5 s.
        stop(deadline_s=cli.STOP_DEADLINE_S)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python serve/app.py`` and ``matryoshka-serve``."""
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
