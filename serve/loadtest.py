"""A bounded load test of the embedding endpoint, compared with in-process encoding.

    python serve/loadtest.py --model bundled:minilm --start --clients 1,16
    python serve/loadtest.py --url http://127.0.0.1:8000 --model runs/local/best --clients 16

Each client sends single-text requests back to back until the run's request count or time
limit is reached (both bounded; only loopback addresses are accepted). It prints requests/s,
p50/p95/p99 latency, the batch size the server achieved (from /v1/stats), and the ratio to
a plain in-process ``model.encode`` of the same texts at batch size = clients, measured in
the same run. ``--start`` deploys the model itself (one replica, all CPUs) and stops it after.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@dataclass
class Result:
    clients: int
    requests: int
    seconds: float
    latencies_ms: list[float]
    mean_batch: float
    inprocess_per_s: float
    single_encode_ms: float

    @property
    def per_s(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def check_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(f"error: {url}: the load test only targets this machine (127.0.0.1, localhost, ::1)")


def sample_texts(n: int, seed: int = 0) -> list[str]:
    """Real short texts: Debian package short descriptions (the queries of the default data)."""
    from trainers import debian

    pairs = debian.load_pairs()
    return [p["anchor"] for p in random.Random(seed).sample(pairs, n)]


class Connection:
    """One keep-alive HTTP/1.1 connection that posts pre-encoded JSON bodies.

    The load generator shares this machine's cores with the server, so every millisecond of
    CPU it spends per request is taken from the model: this costs a fraction of what a
    general client (httpx's AsyncClient) does per request, and measures the server instead.
    """

    def __init__(self, url: str, path: str, api_key: str | None = None):
        parsed = urlparse(url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
        self.head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{auth}"
                     "Content-Type: application/json\r\nContent-Length: ").encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(self.head + str(len(body)).encode() + b"\r\n\r\n" + body)
        status = int((await self.reader.readline()).split()[1])
        length, chunked, close = 0, False, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()
        if chunked:
            parts = []
            while size := int((await self.reader.readline()).split(b";")[0], 16):
                parts.append(await self.reader.readexactly(size))
                await self.reader.readline()
            await self.reader.readline()
            payload = b"".join(parts)
        else:
            payload = await self.reader.readexactly(length)
        if close:
            await self.close()
        return status, payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


async def run_load(url: str, texts: list[str], clients: int, max_requests: int, time_limit_s: float,
                   api_key: str | None = None) -> tuple[list[float], float]:
    bodies = [json.dumps({"input": text}).encode() for text in texts]
    latencies: list[float] = []
    counter = iter(range(max_requests))
    deadline = time.monotonic() + time_limit_s

    async def client(connection: Connection) -> None:
        for i in counter:
            if time.monotonic() > deadline:
                return
            started = time.perf_counter()
            status, payload = await connection.post(bodies[i % len(bodies)])
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {payload[:300]!r}")
            latencies.append((time.perf_counter() - started) * 1000)

    connections = [Connection(url, "/v1/embeddings", api_key) for _ in range(clients)]
    try:
        await asyncio.gather(*(c.post(json.dumps({"input": "warm up"}).encode()) for c in connections[:1]))
        started = time.perf_counter()
        await asyncio.gather(*(client(c) for c in connections))
        return latencies, time.perf_counter() - started
    finally:
        for c in connections:
            await c.close()


def stats(url: str, api_key: str | None = None) -> dict:
    import httpx

    return httpx.get(f"{url}/v1/stats", timeout=10).json()


def inprocess(model, texts: list[str], batch_size: int) -> tuple[float, float]:
    """Texts/s of model.encode at ``batch_size`` (best of 3: this machine is noisy, and the
    best in-process figure is the hardest one for the server to match), and the median
    latency of a single-text encode."""
    model.encode(texts[:batch_size], batch_size=batch_size)  # warm-up
    rates = []
    for _ in range(3):
        started = time.perf_counter()
        model.encode(texts, batch_size=batch_size)
        rates.append(len(texts) / (time.perf_counter() - started))
    per_s = max(rates)
    singles = []
    for text in texts[:50]:
        t0 = time.perf_counter()
        model.encode([text], batch_size=1)
        singles.append((time.perf_counter() - t0) * 1000)
    return per_s, statistics.median(singles)


def measure(url: str, model, clients: int, requests: int, time_limit_s: float) -> Result:
    texts = sample_texts(max(requests, 64))
    before = stats(url)
    latencies, seconds = asyncio.run(run_load(url, texts, clients, requests, time_limit_s))
    after = stats(url)
    batches = after["batches"] - before["batches"] - 1  # the warm-up request
    mean_batch = (after["texts"] - before["texts"] - 1) / batches if batches > 0 else 0.0
    per_s, single_ms = inprocess(model, texts[: len(latencies)], batch_size=clients)
    return Result(clients, len(latencies), seconds, latencies, mean_batch, per_s, single_ms)


def table(results: list[Result]) -> str:
    lines = [
        "| clients | requests | req/s | p50 ms | p95 ms | p99 ms | mean batch | in-process texts/s (batch = clients) | ratio | in-process single encode ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.clients} | {r.requests} | {r.per_s:.1f} | {r.pct(50):.1f} | {r.pct(95):.1f} | {r.pct(99):.1f} | "
            f"{r.mean_batch:.1f} | {r.inprocess_per_s:.1f} | {r.per_s / r.inprocess_per_s:.2f}x | {r.single_encode_ms:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server (loopback only)")
    parser.add_argument("--model", required=True, help="the served model, loaded in-process for the comparison")
    parser.add_argument("--start", action="store_true", help="deploy --model first (1 replica, all CPUs), stop after")
    parser.add_argument("--clients", default="1,16", help="comma-separated concurrency levels")
    parser.add_argument("--requests", type=int, default=400, help="requests per level (bound)")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per level (bound)")
    args = parser.parse_args(argv)
    check_loopback(args.url)

    import os

    import torch

    from trainers.models import load_model

    model = load_model(args.model)
    torch.set_num_threads(os.cpu_count() or 1)
    if args.start:
        from ray import serve

        from serve.app import ServeArgs, deployment_options, start, wait_healthy

        port = urlparse(args.url).port or 8000
        options = deployment_options()
        options.pop("autoscaling_config", None)
        options.update(num_replicas=1, ray_actor_options={"num_cpus": os.cpu_count() or 1})
        start(ServeArgs(model=args.model), "127.0.0.1", port, options=options)
        wait_healthy(args.url)
    try:
        results = [measure(args.url, model, int(c), args.requests, args.time_limit) for c in args.clients.split(",")]
    finally:
        if args.start:
            serve.shutdown()
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
