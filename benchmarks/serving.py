"""Serving: our endpoint against a dedicated embedding server, infinity-emb, on the same CPU.

    python benchmarks/serving.py               # MiniLM, 1/16/64 clients, 3 rounds, ~15 min
    python benchmarks/serving.py --model runs/local/best --clients 1,16
    python benchmarks/serving.py --no-peers    # ours only (no infinity install)
    python benchmarks/serving.py --smoke       # tiny random model, ours only (CI runs this)

One model for every server. The bundled MiniLM (or --model) is copied, exported to ONNX
(fp32 and int8) and gated per dim on Debian pairs (trainers.export, trainers.gate), the way a
sweep exports its best model. Then, all on loopback ports 8100-8199:

- ours: serve/app.py on a private Ray, one 1-CPU replica per core, ``--backend auto`` (the
  fastest backend that passed the gate); and ``--backend torch`` for comparison;
- infinity-emb 0.0.78 (a dedicated embedding server) in its own virtual environment, made by
  this script under --peers-dir: its torch engine, and its ONNX Runtime engine (optimum);
- in-process encode of our served backend, at batch = clients, with the libraries' default
  threads (ONNX Runtime's thread per core, spin-waiting: its fastest setting here).

Every server gets the same client (serve/loadtest.py: single-text requests back to back) and
load, paired in time: each round visits every server at one level before the next round. The
table gives median requests/s, pooled p50/p95/p99 latency and every failure; a second table
compares the embeddings each server returns with ours (infinity's ``dimensions`` truncates
without re-normalising, which that table shows).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import add_common_args, markdown_table, results_dir, write_results

from serve.loadtest import at_least_one  # stdlib only at import: no Ray, no torch
from trainers import cli

PORTS = range(8100, 8200)  # this project's benchmark ports, away from tests and `ray start`
INFINITY = "infinity-emb[server,torch]==0.0.78"
INFINITY_ONNX = "infinity-emb[all]==0.0.78"
INPROCESS_TEXTS = 1024  # texts per in-process timing (best of 3 passes): seconds, not minutes


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


def own_haproxy(short_dir: str, ports: list[int]) -> None:
    """Distinct HAProxy files and side ports, so a second Serve on this machine does not collide."""
    os.environ.update(
        {
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{short_dir}/haproxy.cfg",
            # A unix socket's path must stay under 108 bytes: a short folder in /tmp.
            "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{short_dir}/admin.sock",
            "RAY_SERVE_HAPROXY_STATS_PORT": str(ports[0]),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(ports[1]),
        }
    )


def prepare_model(args, work: Path) -> Path:
    """A model folder with its ONNX exports, gated on Debian pairs (as a sweep's export is)."""
    from trainers import export, gate
    from trainers.config import TrainConfig
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
    print(f"--- gating the backends on {task.describe()} (Debian pairs)", flush=True)
    gate.gate(folder, task, config)
    return folder


class Peer:
    """A server process on loopback: infinity-emb, started and stopped by the benchmark."""

    def __init__(self, label: str, command: list[str], url: str, cwd: Path, log: Path) -> None:
        self.label, self.url = label, url
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.log = log

    def wait_ready(self, timeout_s: float = 600) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"error: {self.label} exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise SystemExit(f"error: {self.label} did not come up in {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)


def peer_venv(root: Path, spec: str) -> Path:
    """A virtual environment with ``spec`` (and this project's torch version), made once."""
    venv = root / ("infinity-onnx" if "[all]" in spec else "infinity")
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


def start_peers(args, folder: Path, ports: list[int], work: Path) -> list[Peer]:
    """infinity's torch engine and, with its `all` extra, its ONNX Runtime engine."""
    peers = []
    torch_venv = peer_venv(Path(args.peers_dir), INFINITY)
    peers.append(
        Peer(
            "infinity, torch engine",
            [
                str(torch_venv / "bin" / "infinity_emb"),
                "v2",
                "--model-id",
                str(folder),
                "--engine",
                "torch",
                "--device",
                "cpu",
                "--host",
                "127.0.0.1",
                "--port",
                str(ports[0]),
                "--no-model-warmup",
            ],
            f"http://127.0.0.1:{ports[0]}",
            work,
            work / "infinity-torch.log",
        )
    )
    if not args.no_onnx_peer:
        onnx_venv = peer_venv(Path(args.peers_dir), INFINITY_ONNX)
        # Its optimum engine wants model.onnx at the folder's root, run from inside the folder,
        # and no onnx/ beside it: it then asks optimum for "onnx/model.onnx", which optimum's
        # file lookup (by bare name) never finds.
        onnx_folder = Path(
            shutil.copytree(folder, work / "model-onnx-root", ignore=shutil.ignore_patterns("onnx"))
        )
        shutil.copy(folder / "onnx" / "model.onnx", onnx_folder / "model.onnx")
        peers.append(
            Peer(
                "infinity, ONNX Runtime fp32 (optimum engine)",
                [
                    str(onnx_venv / "bin" / "infinity_emb"),
                    "v2",
                    "--model-id",
                    ".",
                    "--engine",
                    "optimum",
                    "--device",
                    "cpu",
                    "--pooling-method",
                    "mean",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(ports[1]),
                    "--no-model-warmup",
                ],
                f"http://127.0.0.1:{ports[1]}",
                onnx_folder,
                work / "infinity-onnx.log",
            )
        )
    for peer in peers:
        peer.wait_ready()
    return peers


def measure(args, targets: dict[str, tuple[str, str]], encoder, texts: list[str]) -> dict:
    """{level: {label: [Load per round]}, level: {"in-process": [texts/s per round]}}."""
    from serve import loadtest

    results: dict[int, dict[str, list]] = {}
    for clients in (int(c) for c in args.clients.split(",")):
        level: dict[str, list] = {label: [] for label in targets}
        level["in-process"] = []
        for round_ in range(args.rounds):
            for label, (url, route) in targets.items():
                load = asyncio.run(
                    loadtest.run_load(
                        url, texts, clients, args.requests, args.time_limit, route=route
                    )
                )
                level[label].append(load)
                print(
                    f"  {clients:>3} clients, round {round_ + 1}, {label}: "
                    f"{load.ok / load.seconds:.1f} req/s, failures {dict(load.outcomes)}",
                    flush=True,
                )
            level["in-process"].append(inprocess_rate(encoder, texts[:INPROCESS_TEXTS], clients))
        results[clients] = level
    return results


def inprocess_rate(encoder, texts: list[str], batch: int) -> float:
    """Texts/s of the served backend's own encode at ``batch`` (best of 3)."""
    encoder.encode(texts[:batch])
    rates = []
    for _ in range(3):
        started = time.perf_counter()
        for i in range(0, len(texts), batch):
            encoder.encode(texts[i : i + batch])
        rates.append(len(texts) / (time.perf_counter() - started))
    return max(rates)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else float("nan")


def tables(results: dict, ours: str) -> tuple[str, dict]:
    from serve.loadtest import describe_failures

    rows, figures = [], {}
    for clients, level in results.items():
        for label, loads in level.items():
            if label == "in-process":
                continue
            rate = statistics.median(load.ok / load.seconds for load in loads)
            latencies = [ms for load in loads for ms in load.latencies_ms]
            outcomes = sum((load.outcomes for load in loads), type(loads[0].outcomes)())
            figures[(clients, label)] = {
                "rate": rate,
                "p50": pct(latencies, 50),
                "rounds": [load.ok / load.seconds for load in loads],
            }
            rows.append(
                [
                    clients,
                    label,
                    f"{rate:.1f}",
                    f"{pct(latencies, 50):.1f}",
                    f"{pct(latencies, 95):.1f}",
                    f"{pct(latencies, 99):.1f}",
                    describe_failures(outcomes),
                ]
            )
        inproc = statistics.median(level["in-process"])
        figures[(clients, "in-process")] = {"rate": inproc, "rounds": level["in-process"]}
        rows.append(
            [
                clients,
                f"in-process encode ({ours} backend, batch = clients)",
                f"{inproc:.1f}",
                "-",
                "-",
                "-",
                "-",
            ]
        )
    table = markdown_table(
        ["clients", "server", "req/s (median)", "p50 ms", "p95 ms", "p99 ms", "failed"],
        rows,
        "rlrrrrl",
    )
    return table, figures


def compare_embeddings(targets: dict[str, tuple[str, str]], ours: str, texts: list[str]) -> str:
    """What each server returns for the same texts, against ours: full dim and dimensions=64."""
    import httpx
    import numpy as np

    def fetch(url: str, route: str, dims: int | None) -> np.ndarray:
        body = {"input": texts, "model": "model"}
        if dims:
            body["dimensions"] = dims
        reply = httpx.post(f"{url}{route}", json=body, timeout=60).json()
        return np.array([d["embedding"] for d in reply["data"]], dtype=np.float32)

    rows = []
    reference = {d: fetch(*targets[ours], d) for d in (None, 64)}
    for label, (url, route) in targets.items():
        for dims in (None, 64):
            try:
                got = fetch(url, route, dims)
            except (httpx.HTTPError, KeyError, ValueError) as err:
                rows.append([label, dims or "full", f"error: {err}", "-", "-"])
                continue
            ref = reference[dims]
            unit = got / np.linalg.norm(got, axis=1, keepdims=True)
            cosine = (unit * ref).sum(axis=1).min()
            norms = np.linalg.norm(got, axis=1)
            rows.append(
                [
                    label,
                    dims or "full",
                    f"{np.abs(got - ref).max():.2e}",
                    f"{cosine:.6f}",
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
    parser.add_argument("--clients", default="1,16,64", help="comma-separated concurrency levels")
    # Rounds of several seconds: with 600 requests a round at 16-64 clients lasted 2-3 s, of
    # which opening the connections and draining the last requests in flight are a visible part
    # (16 clients, 600 -> 3000 requests, two runs: ours 259.6 -> 282.7 req/s, infinity's ONNX
    # engine 211.1 -> 232.4).
    parser.add_argument("--requests", type=at_least_one, default=3000, help="requests per round")
    parser.add_argument("--time-limit", type=float, default=12.0, help="seconds per round (bound)")
    parser.add_argument("--rounds", type=at_least_one, default=3, help="paired rounds per level")
    parser.add_argument("--gate-pairs", type=int, default=2000, help="Debian pairs for the gate")
    parser.add_argument("--no-peers", action="store_true", help="ours only, no infinity")
    parser.add_argument("--no-onnx-peer", action="store_true", help="no infinity optimum engine")
    parser.add_argument("--no-torch-row", action="store_true", help="ours with auto only")
    parser.add_argument(
        "--peers-dir",
        default=os.path.expanduser("~/.cache/matryoshka-sweeps/peers"),
        help="where the peers' virtual environments are made (once)",
    )
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.clients, args.requests, args.time_limit = "bundled:tiny", "1,4", 24, 20.0
        args.rounds, args.gate_pairs, args.no_peers = 1, 200, True

    tmp = tempfile.TemporaryDirectory()
    work = Path(tmp.name)
    short = tempfile.TemporaryDirectory(prefix="hx", dir="/tmp")
    port, torch_port, stats_port, metrics_port, *peer_ports = free_ports(6)
    own_haproxy(short.name, [stats_port, metrics_port])

    import serve.app  # noqa: F401  (first: it picks Serve's HAProxy ingress before Ray starts)

    # isort: split
    import ray

    from serve import backend_choice
    from serve.app import per_core_options, start, stop, wait_healthy
    from serve.args import ServeArgs
    from serve.loadtest import sample_texts

    folder = prepare_model(args, work)
    ours = backend_choice.choose("auto", folder, cuda=False, allow_ungated=False)[0]
    # In-process with the libraries' own thread defaults (ONNX Runtime: a thread per core,
    # spin-waiting), the fastest for one process alone on the machine: the bar Serve is held to.
    encoder = backend_choice.load(ours, str(folder), None, False, None)[0]
    texts = sample_texts(max(args.requests, 64))
    targets: dict[str, tuple[str, str]] = {}
    peers: list[Peer] = []
    # Logical CPUs for two deployments of one 1-CPU replica per core: only one of them is under
    # load at any time (the rounds visit the servers in turn), the other idles.
    ray.init(
        address="local",
        num_cpus=2 * (os.cpu_count() or 1),
        include_dashboard=False,
        log_to_driver=False,
    )
    try:
        # Our default backend, and torch beside it for comparison (unless it is the default).
        apps = [("ours", "/ours", "auto", ours)]
        if not args.no_torch_row and ours != "torch":
            apps.append(("ours-torch", "/torch", "torch", "torch"))
        for name, route, backend, label in apps:
            args_ = ServeArgs(model=str(folder), name="model", backend=backend)
            start(args_, "127.0.0.1", port, per_core_options(), name=name, route_prefix=route)
            wait_healthy(f"http://127.0.0.1:{port}{route}")
            targets[f"ours: Serve, {os.cpu_count()} x 1-CPU replicas, {label}"] = (
                f"http://127.0.0.1:{port}{route}",
                "/v1/embeddings",
            )
        if not args.no_peers:
            peers = start_peers(args, folder, peer_ports, work)
            for peer in peers:
                targets[peer.label] = (peer.url, "/embeddings")
        results = measure(args, targets, encoder, texts)
        comparison = compare_embeddings(targets, next(iter(targets)), texts[:8])
    finally:
        for peer in peers:
            peer.stop()
        stop()
    table, figures = tables(results, ours)
    body = report(args, folder, ours, table, figures, comparison, list(targets))
    from trainers.config import TrainConfig
    from trainers.data import load_split

    # The gate's pairs and the load's texts come from the default Debian set.
    seen = load_split(TrainConfig()).fingerprint
    write_results(
        results_dir(args, work), "serving", "Serving: ours vs infinity-emb", body, data=seen
    )
    return 0


def report(args, folder, ours, table, figures, comparison, labels) -> str:
    from trainers.gate import gate_table
    from trainers.models import matryoshka_info

    record = matryoshka_info(folder).get("backends", {})
    dims = matryoshka_info(folder).get("dims", [])
    name = "bundled:tiny (smoke)" if args.smoke else args.model
    lines = [
        f"Model `{name}`, exported to ONNX (fp32, int8 per channel) and gated on "
        f"{record.get('task', '-')}; our default backend (`--backend auto`): **{ours}**.",
        "",
        *gate_table(record, dims),
        "",
        f"Load: single-text requests back to back, at most {args.requests} requests or "
        f"{args.time_limit:g} s per server per round, {args.rounds} rounds, each round visiting "
        "every server in turn (paired in time); loopback; one client process for all.",
        "",
        table,
    ]
    ours_label, peers = labels[0], [lb for lb in labels if lb.startswith("infinity")]
    for clients in (int(c) for c in args.clients.split(",")):
        mine = figures[(clients, ours_label)]
        inproc = figures[(clients, "in-process")]
        # Each ratio also per round (the servers of a round ran back to back): how far the
        # median is from a single round's answer on this shared machine.
        per_round = ", ".join(
            f"{a / b:.2f}" for a, b in zip(mine["rounds"], inproc["rounds"], strict=True)
        )
        line = (
            f"- {clients} clients: Serve / in-process encode of the same backend "
            f"{mine['rate'] / inproc['rate']:.2f}x (rounds: {per_round})"
        )
        if peers:
            best_rate = max(figures[(clients, p)]["rate"] for p in peers)
            best_p50 = min(figures[(clients, p)]["p50"] for p in peers)
            rounds = [figures[(clients, p)]["rounds"] for p in peers]
            best_rounds = [max(r) for r in zip(*rounds, strict=True)]
            per_round = ", ".join(
                f"{a / b:.2f}" for a, b in zip(mine["rounds"], best_rounds, strict=True)
            )
            line += (
                f"; ours / infinity's best {mine['rate'] / best_rate:.2f}x (rounds: {per_round})"
                f"; p50 ours {mine['p50']:.1f} ms vs infinity's best {best_p50:.1f} ms"
            )
        lines.append(line)
    lines += ["", "Embeddings for the same 8 texts, against ours:", "", comparison]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(cli.run(main))  # Ctrl-C and SIGTERM stop it, also under nohup
