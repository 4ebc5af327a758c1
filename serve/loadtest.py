"""A bounded load test of the embedding endpoint, compared with in-process encoding.

    python serve/loadtest.py --model bundled:minilm --start --clients 1,16
    python serve/loadtest.py --url http://127.0.0.1:8000 --model runs/local/best --clients 16

Each client sends single-text requests back to back until the round's request count or time
limit is reached (both bounded; only loopback addresses are accepted). Every concurrency
level runs ``--rounds`` rounds, each the served load followed by a plain in-process
``model.encode`` of the same texts at batch size = clients; it prints the median requests/s,
p50/p95/p99 latency, the batch size the server achieved (from every response's X-Batch-Size,
so the batches of all replicas count), and the median of the per-round ratios (pairing the
two in time keeps a busy moment on a shared machine from tilting the ratio). ``--start``
deploys the model itself as ``python serve/app.py`` does (``--shape`` per-core or
one-replica for the fixed shapes) and stops it after. ``--texts`` picks queries, passages or
a mix of both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from trainers import cli
from trainers.errors import ConfigError


@dataclass
class Load:
    """What one run of the load saw: every outcome (HTTP status, or what went wrong before
    one came), the latencies and batch sizes of the 200s, and the seconds it took."""

    outcomes: Counter[str]
    latencies_ms: list[float]
    batches: list[float]
    seconds: float
    # What each "connection error" was (exception and message, and whether the connection had
    # answered a request before), so a failure says more than its count.
    errors: Counter[str] = field(default_factory=Counter)
    # Requests resent once on a new connection, by why (Connection.post): none is in `outcomes`
    # twice, and a resend that fails is counted there as the failure it met.
    replays: Counter[str] = field(default_factory=Counter)
    texts: int = 0  # texts in the 200s (requests of several texts count each)
    tokens: int = 0  # their tokens, where run_load was given each text's count
    response_bytes: int = 0  # the bodies of the 200s

    @property
    def replayed(self) -> int:
        return sum(self.replays.values())

    @property
    def ok(self) -> int:
        return self.outcomes["200"]

    @property
    def failed(self) -> int:
        return sum(self.outcomes.values()) - self.ok


@dataclass
class Round:
    """One served run of the load next to one in-process run of the same texts."""

    requests: int  # answered 200
    seconds: float
    inprocess_per_s: float
    outcomes: Counter[str]

    @property
    def per_s(self) -> float:
        return self.requests / self.seconds

    @property
    def ratio(self) -> float:
        return self.per_s / self.inprocess_per_s


@dataclass
class Result:
    clients: int
    rounds: list[Round]
    latencies_ms: list[float]  # every request of every round
    mean_batch: float
    single_encode_ms: float

    @property
    def requests(self) -> int:
        return sum(r.requests for r in self.rounds)

    @property
    def outcomes(self) -> Counter[str]:
        return sum((r.outcomes for r in self.rounds), Counter())

    @property
    def per_s(self) -> float:
        return statistics.median(r.per_s for r in self.rounds)

    @property
    def inprocess_per_s(self) -> float:
        return statistics.median(r.inprocess_per_s for r in self.rounds)

    @property
    def ratio(self) -> float:
        # The median of paired ratios: each round's served rate is divided by the in-process
        # rate measured right after it, so a slow minute of this shared machine hits both.
        return statistics.median(r.ratio for r in self.rounds)

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def describe_failures(outcomes: Counter[str]) -> str:
    """``503 x2, connection error x1``, or ``0`` when every request got a 200."""
    failed = {k: v for k, v in sorted(outcomes.items()) if k != "200" and v}
    return ", ".join(f"{k} x{v}" for k, v in failed.items()) or "0"


def at_least_one(value: str) -> int:
    """argparse type for --rounds and --requests."""
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return number


def check_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(
            f"{url}: the load test only targets this machine (127.0.0.1, localhost, ::1)"
        )


TEXT_KINDS = ("queries", "passages", "mixed")


def sample_texts(n: int, seed: int = 0, kind: str = "queries") -> list[str]:
    """``n`` real texts of the default data, drawn without repeats while they last, then reused
    in the same order: ``queries`` (package short descriptions, tens of characters),
    ``passages`` (their long descriptions, up to hundreds of tokens) or ``mixed`` (every other
    one of each, as a search service that also indexes sees)."""
    from trainers import debian

    if kind not in TEXT_KINDS:
        raise ConfigError(f"texts={kind!r}: one of {', '.join(TEXT_KINDS)}")
    pairs = debian.load_pairs()
    picked = random.Random(seed).sample(pairs, min(n, len(pairs)))
    sides = {"queries": ("anchor",), "passages": ("positive",), "mixed": ("anchor", "positive")}
    columns = sides[kind]
    return [picked[i % len(picked)][columns[i % len(columns)]] for i in range(n)]


class StaleConnection(ConnectionError):
    """A kept-alive connection closed before the first byte of an answer: safe to resend."""

    reason = "kept-alive connection closed before an answer"


class CutOff(ConnectionError):
    """The connection closed after an answer's headers and before the end of its body."""

    reason = "answer cut off after its headers"


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
        self.head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{auth}"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.answered = 0  # responses read on the open connection
        self.replays: Counter[str] = Counter()  # requests resent once, by why (post)

    async def post(self, body: bytes) -> tuple[int, bytes, float | None]:
        """Status, body and the X-Batch-Size header (None when absent).

        Raises ConnectionError when the server closes the connection or answers something that
        is not HTTP; the caller counts it and the next post opens a new connection. Two cases
        are resent once on a new connection instead, as HTTP clients do for a request they know
        to be idempotent (an embedding is; the OpenAI SDK resends on any broken connection):
        - a kept-alive connection that had answered before closed before the first byte of this
          answer (RFC 9112, 9.3.1: a server may close an idle connection as a request leaves);
        - the connection closed after the answer's headers, before the end of its body. A
          replica SIGKILLed between the two socket writes of one answer (uvicorn writes the
          headers, then the body) does this, and HAProxy cannot replay an answer whose headers
          it has passed on (README, Faults).
        Each resend counts in ``replays``, by why; a resend that fails raises as any post does.
        """
        try:
            return await self._post(body)
        except (StaleConnection, CutOff) as error:
            self.replays[error.reason] += 1
            await self.close()
            return await self._post(body)

    async def _post(self, body: bytes) -> tuple[int, bytes, float | None]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            self.answered = 0
        try:
            self.writer.write(self.head + str(len(body)).encode() + b"\r\n\r\n" + body)
            first = await self.reader.readline()
        except ConnectionError as error:
            if self.answered:
                raise StaleConnection(f"closed before any answer: {error!r}") from error
            raise
        if not first and self.answered:
            raise StaleConnection("closed before any answer")
        status_line = first.split()
        if len(status_line) < 2 or not status_line[1].isdigit():
            raise ConnectionError(f"no HTTP status line: {b' '.join(status_line)[:80]!r}")
        status = int(status_line[1])
        length, chunked, close, batch = 0, False, False, None
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()
            elif name == b"x-batch-size":
                batch = float(value)
        try:
            payload = await self._read_body(length, chunked)
        except (asyncio.IncompleteReadError, ConnectionError) as error:
            raise CutOff(f"{status} answer cut off: {error!r}") from error
        self.answered += 1
        if close:
            await self.close()
        return status, payload, batch

    async def _read_body(self, length: int, chunked: bool) -> bytes:
        assert self.reader is not None
        if not chunked:
            return await self.reader.readexactly(length)
        parts = []
        while True:
            line = await self.reader.readline()
            if not line:  # closed where a chunk's size was due
                raise asyncio.IncompleteReadError(b"".join(parts), None)
            if not (size := int(line.split(b";")[0], 16)):
                break
            parts.append(await self.reader.readexactly(size))
            await self.reader.readline()
        await self.reader.readline()
        return b"".join(parts)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


# What a client counts instead of dying: the server closed or broke the connection, or did not
# answer in time. Either way the next request opens a new connection.
CONNECTION_ERRORS = (ConnectionError, OSError, asyncio.IncompleteReadError, ValueError)


async def run_load(
    url: str,
    texts: list[str],
    clients: int,
    max_requests: int,
    time_limit_s: float,
    api_key: str | None = None,
    timeout_s: float = 30.0,
    route: str = "/v1/embeddings",
    batch: int = 1,
    tokens: list[int] | None = None,
    fields: dict[str, Any] | None = None,
) -> Load:
    """``clients`` connections send requests back to back until ``max_requests`` were sent or
    ``time_limit_s`` passed; every outcome is counted, none stops the load. A request holds one
    text (``"input": "..."``) or, with ``batch`` > 1, the next ``batch`` texts as a list;
    ``tokens`` (each text's token count) makes ``Load.tokens`` count the tokens answered;
    ``fields`` go into every request (``{"encoding_format": "int8", "dimensions": 256}``)."""
    extra = fields or {}
    if batch == 1:
        bodies = [json.dumps({"input": text, **extra}).encode() for text in texts]
    else:
        bodies = [
            json.dumps({"input": texts[i : i + batch], **extra}).encode()
            for i in range(0, len(texts) - batch + 1, batch)
        ]
    if not bodies:
        raise ConfigError(f"batch={batch}: more than the {len(texts)} texts given")
    counts = tokens or [0] * len(texts)
    body_tokens = [sum(counts[i * batch : (i + 1) * batch]) for i in range(len(bodies))]
    load = Load(Counter(), [], [], 0.0)
    counter = iter(range(max_requests))
    deadline = time.monotonic() + time_limit_s

    async def client(connection: Connection) -> None:
        for i in counter:
            if time.monotonic() > deadline:
                return
            started = time.perf_counter()
            try:
                # asyncio.timeout, not wait_for: wait_for wraps every request in a task of its
                # own, CPU that this client takes from the server it measures.
                async with asyncio.timeout(timeout_s):
                    status, answer, formed = await connection.post(bodies[i % len(bodies)])
            except TimeoutError:
                load.outcomes["timeout"] += 1
                await connection.close()
                continue
            except CONNECTION_ERRORS as error:
                load.outcomes["connection error"] += 1
                reused = "reused" if connection.answered else "new"
                load.errors[f"{type(error).__name__} on a {reused} connection: {error}"[:160]] += 1
                await connection.close()
                continue
            load.outcomes[str(status)] += 1
            if status == 200:
                load.latencies_ms.append((time.perf_counter() - started) * 1000)
                load.texts += batch
                load.tokens += body_tokens[i % len(bodies)]
                load.response_bytes += len(answer)
                if formed:
                    load.batches.append(formed)

    path = urlparse(url).path.rstrip("/") + route  # behind a route prefix too
    connections = [Connection(url, path, api_key) for _ in range(clients)]
    try:
        with contextlib.suppress(*CONNECTION_ERRORS, TimeoutError):  # a warm-up, not counted
            await asyncio.wait_for(connections[0].post(b'{"input": "warm up"}'), timeout_s)
        started = time.perf_counter()
        await asyncio.gather(*(client(c) for c in connections))
        load.seconds = time.perf_counter() - started
        load.replays = sum((c.replays for c in connections), Counter())
        return load
    finally:
        for c in connections:
            await c.close()


def inprocess(model, texts: list[str], batch_size: int) -> float:
    """Texts/s of model.encode at ``batch_size``: best of 3 (the best in-process figure is the
    hardest one for the server to match)."""
    model.encode(texts[:batch_size], batch_size=batch_size)  # warm-up
    rates = []
    for _ in range(3):
        started = time.perf_counter()
        model.encode(texts, batch_size=batch_size)
        rates.append(len(texts) / (time.perf_counter() - started))
    return max(rates)


def single_encode_ms(model, texts: list[str]) -> float:
    """Median latency of a one-text in-process encode."""
    singles = []
    for text in texts[:50]:
        t0 = time.perf_counter()
        model.encode([text], batch_size=1)
        singles.append((time.perf_counter() - t0) * 1000)
    return statistics.median(singles)


def measure(
    url: str,
    model,
    clients: int,
    requests: int,
    time_limit_s: float,
    rounds: int = 3,
    timeout_s: float = 30.0,
    kind: str = "queries",
) -> Result:
    """``rounds`` paired rounds at one concurrency level: the served load (``requests`` single-text
    requests, bounded by ``time_limit_s``), then in-process encoding of the texts it sent."""
    texts = sample_texts(max(requests, 64), kind=kind)
    done: list[Round] = []
    latencies: list[float] = []
    sizes: list[float] = []
    for _ in range(rounds):
        load = asyncio.run(
            run_load(url, texts, clients, requests, time_limit_s, timeout_s=timeout_s)
        )
        latencies += load.latencies_ms
        sizes += load.batches
        reference = inprocess(model, texts[: max(load.ok, clients)], clients)
        done.append(Round(load.ok, load.seconds, reference, load.outcomes))
    # Each request is one text, and a batch of b texts answers b requests that each say b, so
    # sum(1/b) counts the batches: texts / batches is the mean batch size.
    mean_batch = len(sizes) / sum(1 / b for b in sizes) if sizes else 0.0
    return Result(clients, done, latencies, mean_batch, single_encode_ms(model, texts))


def table(results: list[Result]) -> str:
    lines = [
        "| clients | requests | failed | req/s | p50 ms | p95 ms | p99 ms | mean batch "
        "| in-process texts/s (batch = clients) | ratio | ratio per round "
        "| in-process single encode ms |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        per_round = " ".join(f"{x.ratio:.2f}" for x in r.rounds)
        lines.append(
            f"| {r.clients} | {r.requests} | {describe_failures(r.outcomes)} | {r.per_s:.1f} "
            f"| {r.pct(50):.1f} | {r.pct(95):.1f} | {r.pct(99):.1f} | {r.mean_batch:.1f} "
            f"| {r.inprocess_per_s:.1f} | {r.ratio:.2f}x | {per_round} | {r.single_encode_ms:.1f} |"
        )
    return "\n".join(lines)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server (loopback only)")
    parser.add_argument(
        "--model", required=True, help="the served model, loaded in-process for the comparison"
    )
    parser.add_argument(
        "--start",
        action="store_true",
        help="deploy --model first (as python serve/app.py does), stop after",
    )
    parser.add_argument(
        "--shape",
        choices=("default", "per-core", "one-replica"),
        default="default",
        help="with --start: serve/config.yaml's deployment on this machine (default), a fixed "
        "1-CPU replica per core, or one replica that holds every core",
    )
    parser.add_argument(
        "--texts", choices=TEXT_KINDS, default="queries", help="what the requests carry"
    )
    parser.add_argument("--clients", default="1,16", help="comma-separated concurrency levels")
    parser.add_argument(
        "--requests", type=at_least_one, default=400, help="requests per round (bound)"
    )
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per round (bound)")
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=30.0,
        help="seconds before a request counts as timed out",
    )
    parser.add_argument(
        "--rounds",
        type=at_least_one,
        default=3,
        help="paired served/in-process rounds per level; the table gives medians",
    )
    args = parser.parse_args(argv)
    check_loopback(args.url)

    import os

    import torch

    from trainers.models import load_model

    model = load_model(args.model)
    torch.set_num_threads(os.cpu_count() or 1)
    if args.start:
        from serve.app import machine_options, per_core_options, start, stop, wait_healthy
        from serve.args import ServeArgs

        port = urlparse(args.url).port or 8000
        options = {
            "default": None,
            "per-core": per_core_options(),
            "one-replica": machine_options(replicas=1),
        }[args.shape]
        start(ServeArgs(model=args.model), "127.0.0.1", port, options=options)
        wait_healthy(args.url)
    try:
        results = [
            measure(
                args.url,
                model,
                int(c),
                args.requests,
                args.time_limit,
                args.rounds,
                args.request_timeout,
                args.texts,
            )
            for c in args.clients.split(",")
        ]
    finally:
        if args.start:
            stop()
    print(table(results))
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
