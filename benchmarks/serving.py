"""Serving: the embedding endpoint under load vs in-process encode, and the ONNX backend.

    python benchmarks/serving.py               # MiniLM, 1/4/16/64 clients, 5 x 400 requests, 6 min
    python benchmarks/serving.py --model runs/local/best --clients 1,16
    python benchmarks/serving.py --smoke       # tiny random model, about a minute (CI runs this)

It deploys serve/app.py's EmbeddingService on a private local Ray (one 1-CPU replica per
core, HTTP and HAProxy on loopback ports 8100-8199) and drives it with serve/loadtest.py's
machinery: at each level, --rounds times, N clients send single-text requests back to back
(bounded by --requests and --time-limit), then the same texts are encoded in-process at
batch size N; a round's ratio is served requests/s over in-process texts/s, and the table
gives the median over rounds next to every round's ratio (this machine's speed drifts by
+-15% from minute to minute, more than the effects being measured).

Then sentence-transformers' ONNX backend (``backend="onnx"``) and its dynamically quantised
int8 variant (``export_dynamic_quantized_onnx_model``) are built from the same model. Where
that works, their in-process encode rate is compared with torch's on this CPU; where it does
not, the results file says exactly why (the error, and pip's verdict on installing
``sentence-transformers[onnx]`` next to this environment's transformers).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from _common import add_common_args, markdown_table, results_dir, write_results

from serve.loadtest import at_least_one  # noqa: E402  (stdlib only at import: no Ray, no torch)

PORTS = range(
    8100, 8200
)  # this project's benchmark ports, away from tests and `ray start` clusters


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


def serve_part(args, model_path: str, model, port: int):
    from serve import loadtest
    from serve.app import ServeArgs, per_core_options, start, stop, wait_healthy

    url = f"http://127.0.0.1:{port}"
    start(ServeArgs(model=model_path), "127.0.0.1", port, options=per_core_options())
    wait_healthy(url)
    try:
        return [
            loadtest.measure(url, model, int(c), args.requests, args.time_limit, args.rounds)
            for c in args.clients.split(",")
        ]
    finally:
        stop()


def onnx_variants(model_path: str, folder: Path) -> tuple[dict, str | None]:
    """sentence-transformers' ONNX model and its int8 variant, or why they cannot be built."""
    import shutil

    from sentence_transformers import SentenceTransformer

    local = folder / "onnx-model"
    shutil.copytree(model_path, local)  # the export writes onnx/ into the model folder
    try:
        onnx = SentenceTransformer(str(local), backend="onnx", device="cpu")
        onnx.save_pretrained(str(local))
        from sentence_transformers.backend import export_dynamic_quantized_onnx_model

        export_dynamic_quantized_onnx_model(onnx, "avx2", str(local))
        int8 = SentenceTransformer(
            str(local),
            backend="onnx",
            device="cpu",
            model_kwargs={"file_name": "onnx/model_qint8_avx2.onnx"},
        )
    except Exception as err:  # noqa: BLE001 - any failure is the finding, reported verbatim
        return {}, f"{type(err).__name__}: {err}".strip()
    return {"ONNX (onnxruntime)": onnx, "ONNX int8 (dynamic, avx2)": int8}, None


def pip_verdict() -> str:
    """What pip says about installing the ONNX extra of the installed sentence-transformers."""
    spec = f"sentence-transformers[onnx]=={metadata.version('sentence-transformers')}"
    try:
        # Not --quiet: that hides pip's "The conflict is caused by" lines, the useful part.
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--dry-run", spec],
            capture_output=True,
            text=True,
            timeout=300,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"`pip install --dry-run {spec}` could not run: {err}"
    if done.returncode == 0:
        return f"`pip install --dry-run {spec}` would succeed: install it and run this again"
    text = done.stdout + done.stderr
    causes = [line.strip() for line in text.splitlines() if re.search(r" depends on ", line)]
    tail = "; ".join(dict.fromkeys(causes)) or text.strip().splitlines()[-1]
    return f"`pip install --dry-run {spec}` fails: {tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="bundled:minilm", help="model spec or folder to serve")
    parser.add_argument("--clients", default="1,4,16,64", help="comma-separated concurrency levels")
    parser.add_argument(
        "--requests", type=at_least_one, default=400, help="requests per round (bound)"
    )
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per round (bound)")
    parser.add_argument(
        "--rounds", type=at_least_one, default=5, help="paired served/in-process rounds per level"
    )
    parser.add_argument(
        "--no-pip-check", action="store_true", help="do not ask pip why the ONNX extra is missing"
    )
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.clients, args.requests, args.time_limit, args.rounds = (
            "bundled:tiny",
            "1,4",
            24,
            30.0,
            2,
        )

    tmp = tempfile.TemporaryDirectory()
    short = tempfile.TemporaryDirectory(prefix="hx", dir="/tmp")
    port, stats_port, metrics_port = free_ports(3)
    own_haproxy(short.name, [stats_port, metrics_port])

    import serve.app  # noqa: F401  (first: it picks Serve's HAProxy ingress before Ray starts)

    # isort: split
    import ray
    import torch

    from serve import loadtest
    from trainers.models import load_model, resolve

    model_path, _ = resolve(args.model)
    model = load_model(args.model)
    torch.set_num_threads(os.cpu_count() or 1)
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        served = serve_part(args, model_path, model, port)
    finally:
        ray.shutdown()
    name = "bundled:tiny (smoke)" if args.smoke else args.model
    body = (
        f"### Served (torch) vs in-process encode\n\n`{name}` served by serve/app.py on a private "
        f"Ray: {os.cpu_count()} "
        "replicas of 1 CPU (one torch thread each), HAProxy ingress, loopback; each level at most "
        f"{args.requests} requests "
        f"or {args.time_limit:g} s per round, {args.rounds} rounds. Each round serves the load, "
        "then encodes the same "
        "texts in-process at batch = clients (best of 3); ratio = the median over rounds of "
        "served req/s / "
        "in-process texts/s; req/s and in-process texts/s are medians, latencies pool every "
        "round.\n\n" + loadtest.table(served) + "\n"
    )

    variants, reason = onnx_variants(model_path, Path(tmp.name))
    body += "\n### ONNX backend vs torch, in-process encode on this CPU\n\n"
    if reason is None:
        texts = loadtest.sample_texts(args.requests)
        rows = []
        for clients in (int(c) for c in args.clients.split(",")):
            torch_rate = loadtest.inprocess(model, texts, clients)
            row = [clients, f"{torch_rate:.1f}"]
            for variant in variants.values():
                rate = loadtest.inprocess(variant, texts, clients)
                row += [f"{rate:.1f}", f"{rate / torch_rate:.2f}x"]
            rows.append(row)
        headers = ["batch", "torch texts/s"] + [
            h for v in variants for h in (f"{v} texts/s", "vs torch")
        ]
        body += (
            markdown_table(headers, rows)
            + "\nThe served path (serve/app.py) loads the torch backend; the ONNX rows are "
            "in-process only.\n"
        )
    else:
        body += (
            "Not measured: sentence-transformers' ONNX backend could not be built here from "
            f"`{name}`.\n\n"
            f'- loading it with `backend="onnx"` failed: {reason}\n'
        )
        if not args.no_pip_check and not args.smoke:
            body += f"- {pip_verdict()}\n"
    write_results(
        results_dir(args, tmp.name), "serving", "Serving: load test vs in-process encode", body
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
