"""The environment Serve must find when its Ray starts: HAProxy ingress, throughput mode, retries.

`python serve/app.py` starts its own Ray and sets these itself, each only where the environment
has not. Anything else that starts the Ray that serves needs them in its environment first:

    eval "$(python -m serve.env)"; serve run serve/config.yaml     # Serve's CLI, one machine
    eval "$(python -m serve.env)"; ray start --head ...             # cluster.yaml, every node

It prints `export NAME=value` lines; a value already in the environment is kept. Serve reads
them when `ray.serve` is imported and when its processes start (the controller, HAProxy and
the replicas inherit the environment of the `ray start` that made their node), so setting them
afterwards, or only where `serve deploy` runs, changes nothing. Figures: README, Serving.
"""

from __future__ import annotations

import os
import shlex


def defaults() -> dict[str, str]:
    """Each variable and the value this project serves with (on this machine's core count)."""
    cores = os.cpu_count() or 4
    return {
        # Serve's HAProxy ingress instead of its Python HTTP proxy: on a 2-core machine a no-op
        # Serve app went from 59 to 348 requests/s at 16 clients with it.
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        # A request whose replica dies before answering is replayed on another replica (an
        # embedding request is idempotent). Serve's default retries connection failures only:
        # a replica SIGKILLed under 32 clients cost 25 requests (9 got HAProxy's 500, 16 a
        # dropped connection); with these three, 0 of ~16,000 in three runs.
        "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response junk-response",
        # Serve's throughput mode, documented for use with HAProxy: among other things a
        # replica runs our code on its own event loop instead of a second thread's. Paired,
        # 2 x 1-CPU ONNX replicas: 16 clients 292.6/286.0 -> 303.9/301.2 req/s, 64 clients
        # 308.1/320.7 -> 329.8/339.6, 1 client unchanged.
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        # Serve's per-request HTTP metrics (serve_num_http_requests, latency, errors) recorded
        # by the replica that answers, as Serve does without HAProxy, instead of HAProxy
        # writing a log datagram per request for its manager actor to parse: that actor took
        # 3.7% of a core at 16 clients on 2 cores, 0.7% without; Serve / in-process encode
        # 0.825 and 0.831 -> 0.840 (and 0.839 -> 0.845 with orjson's response body). The
        # metrics stay; only HAProxy's own node gauges go (set it to 1 to have them back).
        "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
        # HAProxy threads: one per 4 cores, 1 to 4 (Serve's default is 4 on any machine). On 2
        # cores one thread forwarded ~320 req/s at 2.7% of a core, four took 4.2% for the same
        # work; one thread forwards thousands a second, more than a CPU model serves.
        "RAY_SERVE_HAPROXY_NBTHREAD": str(min(4, max(1, cores // 4))),
    }


def apply() -> None:
    """Set every default the environment does not already set (before Ray or Serve starts)."""
    for name, value in defaults().items():
        os.environ.setdefault(name, value)


def exports() -> str:
    """Shell `export` lines for the defaults; values already in the environment win."""
    return "\n".join(
        f"export {name}={shlex.quote(os.environ.get(name, value))}"
        for name, value in defaults().items()
    )


if __name__ == "__main__":
    print(exports())
