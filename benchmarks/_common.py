"""What every benchmark shares: the machine and versions header, and the results file."""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PACKAGES = ("torch", "sentence-transformers", "transformers", "ray", "optuna", "wandb")


def environment() -> str:
    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    cpu = platform.processor() or platform.machine()
    return (
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}\n"
        f"- machine: {os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}\n"
        f"- python {platform.python_version()}; {', '.join(versions)}\n"
    )


def write_results(results_dir: str | Path, name: str, title: str, body: str) -> Path:
    """Write ``<results_dir>/<name>.md`` with the command line that produced it."""
    command = "python " + " ".join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])
    text = f"# {title}\n\n{environment()}- command: `{command}`\n\n{body.rstrip()}\n"
    path = Path(results_dir) / f"{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)
    print(f"written: {path}")
    return path
