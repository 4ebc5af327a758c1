"""What every benchmark shares: the machine and versions header, contention, the results file."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import threading
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

PACKAGES = ("torch", "sentence-transformers", "transformers", "ray", "optuna", "wandb")
RESULTS = REPO / "benchmarks" / "results"
STARTED = time.perf_counter()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str | None = None) -> str:
    """The accelerator a benchmark ran on, in words: the GPU's name, or the CPU's."""
    import torch

    if (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda"):
        return f"GPU: {torch.cuda.get_device_name(0)}"
    return f"CPU: {cpu_name()}, {torch.get_num_threads()} torch threads"


class Contention:
    """CPU time that processes outside this benchmark's process tree used while it ran.

    These machines are shared (tests of other work may run at the same time); the results
    file says how much of the machine something else took, so a reader can judge a figure.
    """

    def __init__(self, interval_s: float = 2.0) -> None:
        self.interval_s = interval_s
        self.other_cpu_s = 0.0
        self.ours_cpu_s = 0.0
        self.seconds = 0.0
        self._last: dict[int, float] = {}
        self._tick = os.sysconf("SC_CLK_TCK")
        self._stop = threading.Event()
        self._sample(first=True)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self, first: bool = False) -> None:
        stats: dict[int, tuple[int, float]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            # fields[1] is the parent pid; fields[11], fields[12] are utime, stime in ticks.
            stats[int(entry.name)] = (
                int(fields[1]),
                (int(fields[11]) + int(fields[12])) / self._tick,
            )
        ours = {os.getpid()}
        changed = True
        while changed:  # descendants: Ray's raylet and workers, subprocesses
            changed = False
            for pid, (parent, _) in stats.items():
                if parent in ours and pid not in ours:
                    ours.add(pid)
                    changed = True
        if not first:
            for pid, (_, cpu) in stats.items():
                delta = cpu - self._last.get(pid, 0.0)
                if pid in ours:
                    self.ours_cpu_s += delta
                else:
                    self.other_cpu_s += delta
            self.seconds += self.interval_s
        self._last = {pid: cpu for pid, (_, cpu) in stats.items()}

    def summary(self) -> str:
        self._stop.set()
        cores = os.cpu_count() or 1
        share = self.other_cpu_s / (self.seconds * cores) if self.seconds else 0.0
        note = " (contended: read these figures with care)" if share > 0.10 else ""
        return (
            f"- other processes on this machine used {self.other_cpu_s:.0f} CPU-s during the run, "
            f"{share:.0%} of its {cores} cores{note}; this benchmark used {self.ours_cpu_s:.0f} "
            "CPU-s\n"
        )


CONTENTION = Contention() if Path("/proc/stat").exists() else None


def code_version() -> str:
    """The commit the benchmark ran from, and any tracked file changed since (they shape the
    figures)."""
    import subprocess

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split("\n")
    except (OSError, subprocess.TimeoutExpired):
        return "not a git checkout"
    changed = [line[3:] for line in changed if line.strip()]
    return f"git {commit or '?'}" + (
        f" with uncommitted changes to {', '.join(changed)}" if changed else ""
    )


CODE = code_version()  # at start: the code that ran, not what changed while it ran


def environment() -> str:
    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return (
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}\n"
        f"- machine: {os.cpu_count()} CPUs ({cpu_name()}), {platform.system()} "
        f"{platform.release()}\n"
        f"- python {platform.python_version()}; {', '.join(versions)}\n"
        f"- code: {CODE}\n"
    )


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--smoke", action="store_true", help="tiny random model and data: seconds (CI runs this)"
    )
    parser.add_argument(
        "--results-dir", default=None, help="default: benchmarks/results (a temp dir with --smoke)"
    )


def results_dir(args: argparse.Namespace, smoke_dir: str | Path) -> Path:
    """Where the results file goes: --results-dir, else a temp dir for smoke runs, else results/."""
    return Path(args.results_dir or (smoke_dir if args.smoke else RESULTS))


def markdown_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None
) -> str:
    """A Markdown table; ``align`` is one character per column, 'l' or 'r' (default: text
    left, the rest right)."""
    align = align or "l" + "r" * (len(headers) - 1)
    rule = "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"
    lines = ["| " + " | ".join(headers) + " |", rule]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_results(
    results_dir: str | Path,
    name: str,
    title: str,
    body: str,
    data: dict[str, Any] | None = None,
) -> Path:
    """Write ``<results_dir>/<name>.md`` with the command line that produced it, and the data
    fingerprint (trainers.data) of the pairs it measured on, where it read any."""
    from trainers.data import describe_fingerprint

    command = "python " + " ".join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])
    minutes = (time.perf_counter() - STARTED) / 60
    contention = CONTENTION.summary() if CONTENTION is not None else ""
    seen = f"- data: {describe_fingerprint(data)}\n" if data else ""
    text = (
        f"# {title}\n\n{environment()}- command: `{command}`\n{seen}"
        f"- wall time of the whole benchmark: {minutes:.1f} min\n{contention}\n{body.rstrip()}\n"
    )
    path = Path(results_dir) / f"{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)
    print(f"written: {path}")
    return path
