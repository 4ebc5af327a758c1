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
        # Serve's HAProxy ingress instead of its Python HTTP proxy: several times the
        # requests/s of a no-op app at 16 clients on 2 cores (measured: `git show b512ad1`).
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        # A request whose replica dies before answering is replayed on another replica (an
        # embedding request is idempotent). Serve's default retries connection failures only,
        # and a replica SIGKILLed under load cost requests (500s and dropped connections);
        # tests/serve/test_faults.py holds the promise (measured: `git show fa17178`).
        "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response junk-response",
        # Serve's throughput mode, documented for use with HAProxy: among other things a
        # replica runs our code on its own event loop instead of a second thread's: a few
        # percent more requests/s at 16 and 64 clients (paired: `git show 57b5ef7`).
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        # Throughput mode runs a handle's router on the replica's event loop, which a batch's
        # encode holds for its whole length: a large request's share sent to another replica
        # (serve/deployments.py) then left only between batches, and 256 passages took as
        # long on two replicas as on one (10.8 s vs 10.5 s). Its own loop lets it leave at once.
        "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1",
        # Serve's per-request HTTP metrics (serve_num_http_requests, latency, errors) recorded
        # by the replica that answers, as Serve does without HAProxy, instead of HAProxy
        # writing a log datagram per request for its manager actor to parse, which took CPU
        # from the model. The metrics stay; only HAProxy's own node gauges go (set it to 1 to
        # have them back). Measured: `git show 9686d9c`.
        "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
        # HAProxy threads: one per 4 cores, 1 to 4 (Serve's default is 4 on any machine). One
        # thread forwards far more requests than a CPU model serves, and idle threads cost CPU
        # (measured: `git show 9686d9c`).
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
