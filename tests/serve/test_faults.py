"""Faults, for real: signals to the server, a replica killed under load, overload, health
before the model is ready, and a load tester that counts what goes wrong instead of dying."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from serve import loadtest
from tests.serve.conftest import deploy, free_port, own_serve_env, replica_processes

REPO = Path(__file__).resolve().parents[2]


def ray_processes(pids: list[psutil.Process]) -> list[str]:
    """The processes of ``pids`` still alive (zombies are gone already)."""
    alive = []
    for process in pids:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{process.pid}: {' '.join(process.cmdline())[:100]}")
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_server_in_5_s_and_leaves_no_ray_process(tiny_model_path, signum):
    port = free_port()
    child = subprocess.Popen(
        [sys.executable, "serve/app.py", "--model", str(tiny_model_path), "--port", str(port)],
        cwd=REPO,
        env=own_serve_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # A session of its own, so that the signal reaches only the server. (It does not reset
        # an inherited SIG_IGN: under `nohup make test &` SIGINT arrives ignored, and the server
        # must stop on it anyway.)
        start_new_session=True,
    )
    try:
        lines = []
        for line in child.stdout:  # ends if the child dies first
            lines.append(line)
            if line.startswith("serving "):
                break
        assert lines and lines[-1].startswith("serving "), "".join(lines)[-3000:]
        # The console says which backend serves and why (the tiny model has no ONNX export).
        assert "with the torch backend (auto: no ONNX export" in lines[-1], lines[-1]
        assert httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"input": "a"}).is_success
        processes = psutil.Process(child.pid).children(recursive=True)
        assert any("raylet" in " ".join(p.cmdline()) for p in processes)
        # The README's start uses the machine from the first request: a 1-CPU replica per core
        # (within serve/config.yaml's max_replicas), not one replica and autoscaling's delay.
        from serve.app import deployment_options

        cores = min(os.cpu_count() or 1, deployment_options()["autoscaling_config"]["max_replicas"])
        assert len(replica_processes("embeddings")) == cores, replica_processes("embeddings")
        sent = time.monotonic()
        child.send_signal(signum)
        rest = child.communicate(timeout=60)[0]
        took = time.monotonic() - sent
    finally:
        child.kill()
    assert child.returncode == 0, rest[-3000:]
    assert "shutting down" in rest
    assert took <= 5.0, f"{signal.Signals(signum).name} took {took:.1f} s to stop: {rest[-3000:]}"
    time.sleep(0.5)  # reaped processes leave the table
    assert not ray_processes(processes), ray_processes(processes)


@pytest.mark.slow
def test_a_replica_killed_under_load_costs_no_request(serve_url, tiny_model_path):
    """SIGKILL one of two replicas while 16 clients send: every request gets an HTTP 200 (the
    ingress replays a request whose replica died: RAY_SERVE_HAPROXY_RETRY_ON in serve/env.py).

    The client resends once an answer cut off after its headers, as the OpenAI SDK does: a
    replica killed between its two socket writes of one answer leaves that (seen in CI: 1 of
    17,806 answers), and no server-side replay can undo headers already passed on. At most one
    answer per client can be in that state at the kill, so more resends than clients fail."""
    url = deploy(
        serve_url,
        {"model": str(tiny_model_path), "name": "faulty"},
        "faulty",
        "/faulty",
        num_replicas=2,
        ray_actor_options={"num_cpus": 0.25},
    )
    victims = replica_processes("faulty")
    assert len(victims) == 2

    def kill_one():
        time.sleep(4)
        victims[0].send_signal(signal.SIGKILL)

    killer = threading.Thread(target=kill_one)
    killer.start()
    load = asyncio.run(loadtest.run_load(url, ["a text editor"] * 10, 16, 20000, 15.0))
    killer.join()
    assert victims[0].pid not in [p.pid for p in replica_processes("faulty")], "not killed"
    print("outcomes with a replica killed:", dict(load.outcomes), dict(load.errors), load.replays)
    assert load.ok > 100 and load.failed == 0, (dict(load.outcomes), dict(load.errors))
    assert load.replays[loadtest.CutOff.reason] <= 16, load.replays
    from ray import serve

    serve.delete("faulty")


@pytest.mark.slow
def test_overload_is_answered_429_in_the_envelope_at_once(serve_url, tiny_model_path):
    url = deploy(
        serve_url,
        {"model": str(tiny_model_path), "name": "tight", "max_queue_depth": 2},
        "tight",
        "/tight",
        max_ongoing_requests=64,
    )

    async def burst():
        async with httpx.AsyncClient(timeout=60) as client:
            body = {"input": ["load " * 60] * 8}
            return await asyncio.gather(
                *(client.post(f"{url}/v1/embeddings", json=body) for _ in range(24))
            )

    replies = asyncio.run(burst())
    statuses = [r.status_code for r in replies]
    assert set(statuses) == {200, 429}, statuses
    rejected = next(r for r in replies if r.status_code == 429)
    assert rejected.headers["retry-after"] == "1"
    error = rejected.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "overloaded")
    stats = httpx.get(f"{url}/v1/stats").json()
    assert stats["rejected_overloaded"] == statuses.count(429)
    from ray import serve

    serve.delete("tight")


@pytest.mark.slow
def test_health_is_503_with_the_envelope_until_a_replica_is_ready(serve_url, tiny_model_path):
    from ray import serve

    from serve.app import start
    from serve.args import ServeArgs

    port = int(serve_url.rsplit(":", 1)[1])
    # A replica that cannot be placed (more CPUs than the machine has) never becomes ready.
    start(
        ServeArgs(model=str(tiny_model_path), name="waiting"),
        "127.0.0.1",
        port,
        options={"num_replicas": 1, "ray_actor_options": {"num_cpus": 64}},
        name="waiting",
        route_prefix="/waiting",
        wait=False,
    )
    try:
        deadline = time.monotonic() + 30
        while (reply := httpx.get(f"{serve_url}/waiting/health")).status_code == 404:
            assert time.monotonic() < deadline, "the health app never came up"
            time.sleep(0.2)
        assert reply.status_code == 503 and reply.headers["retry-after"] == "1"
        assert reply.json()["error"]["code"] == "unavailable"
        ready = httpx.get(f"{serve_url}/waiting/health/ready")
        assert ready.status_code == 503 and ready.json()["error"]["type"] == "server_error"
    finally:
        serve.delete("waiting")
        serve.delete("waiting-health")


class FaultyServer:
    """A loopback HTTP server that answers in turn: 200, 503, a closed connection, garbage,
    and a reply slower than the client's timeout (the load tester's faults, not a mock of it)."""

    def __init__(self) -> None:
        self.count = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                self.count += 1
                kind = self.count % 5
                if kind == 0:
                    writer.write(self.reply(200, b'{"data": []}'))
                elif kind == 1:
                    writer.write(self.reply(503, b'{"error": {"message": "busy"}}'))
                elif kind == 2:
                    writer.close()
                    return
                elif kind == 3:
                    writer.write(b"this is not HTTP\r\n\r\n")
                else:
                    await asyncio.sleep(2)  # past the client's 0.5 s timeout
                    writer.write(self.reply(200, b"{}"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    @staticmethod
    def reply(status: int, body: bytes) -> bytes:
        return b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body)


def test_the_load_tester_counts_every_fault_and_keeps_going():
    async def scenario():
        faulty = FaultyServer()
        server = await asyncio.start_server(faulty.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await loadtest.run_load(
                f"http://127.0.0.1:{port}",
                ["x"],
                clients=3,
                max_requests=40,
                time_limit_s=30,
                timeout_s=0.5,
            )

    load = asyncio.run(scenario())
    outcomes = dict(load.outcomes)
    assert sum(outcomes.values()) == 40, outcomes
    assert {"200", "503", "connection error", "timeout"} <= set(outcomes), outcomes
    assert loadtest.describe_failures(load.outcomes).startswith("503 x")


def test_the_load_tester_reuses_texts_when_asked_for_more_than_it_has(debian_pairs):
    texts = loadtest.sample_texts(len(debian_pairs) + 10)
    assert len(texts) == len(debian_pairs) + 10
    assert texts[-10:] == texts[:10]


def test_the_load_tester_table_shows_failures():
    round_ = loadtest.Round(10, 1.0, 20.0, loadtest.Counter({"200": 10, "503": 2}))
    result = loadtest.Result(4, [round_], [10.0] * 10, 1.0, 5.0)
    row = loadtest.table([result]).splitlines()[2]
    assert "| 503 x2 |" in row
