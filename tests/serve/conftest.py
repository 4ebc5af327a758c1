"""One real Serve instance on 127.0.0.1 for the serve tests; apps are added per fixture."""

from __future__ import annotations

import os
import socket
import tempfile

import pytest

# serve.delete() of an app waits out each replica's draining period (30 s: time for an external
# load balancer to deregister it); no load balancer sits in front of these tests.
os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def serve_url():
    import serve.app  # noqa: F401  (first: it picks Serve's ingress before Ray starts)

    # isort: split
    import ray
    from ray import serve as ray_serve

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    ray_serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.app.stop()


def deploy(serve_url: str, args: dict, name: str, route_prefix: str, **options) -> str:
    """Deploy EmbeddingService as app ``name`` at ``route_prefix``; its base URL once healthy."""
    from serve.app import start, wait_healthy
    from serve.args import ServeArgs

    port = int(serve_url.rsplit(":", 1)[1])
    options = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.5}, **options}
    start(
        ServeArgs(**args), "127.0.0.1", port, options=options, name=name, route_prefix=route_prefix
    )
    url = serve_url + route_prefix.rstrip("/")
    wait_healthy(url)
    return url


def replica_processes(app: str) -> list:
    """The processes of app ``app``'s EmbeddingService replicas (psutil.Process)."""
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline"]):
        if f"ServeReplica:{app}:EmbeddingService" in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


def own_serve_env() -> dict[str, str]:
    """Environment for a second Serve (in a subprocess) next to this session's: HAProxy's files
    and side ports must not collide (and a unix socket path must stay under 108 bytes, so no
    deep pytest tmp_path)."""
    short = tempfile.mkdtemp(prefix="hx", dir="/tmp")
    return {
        **os.environ,
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{short}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{short}/admin.sock",
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
    }
