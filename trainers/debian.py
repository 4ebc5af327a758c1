"""The embedded default data set: Debian package descriptions as (query, passage) pairs.

Query = a package's short description ("Real-time strategy game of ancient warfare"),
passage = its long description. Built on first use with apt's own client (no other network
use), cleaned, and cached on disk with a sha256 so later runs are offline:

    apt-get update -o Acquire::Languages=en -o Dir::State::Lists=<tmp>
    /usr/lib/apt/apt-helper cat-file <tmp>/*_main_i18n_Translation-en.lz4

Each pair carries its package and source package; the source package is the group id, so a
split never puts sibling packages (foo, foo-data, foo-doc) on both sides.

The package lists change from day to day, so the set does too: beside the cache,
``debian-pairs-v2.meta.json`` records what was read (each suite's origin, codename and Release
date, and when it was fetched), and every run's data fingerprint carries it (``origin``). To
build it again from today's lists, delete the cache; to reproduce another machine's set, use
the pairs file its run wrote (``runs/<name>/data/pairs.jsonl``) as ``--data``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from trainers.errors import DataError

logger = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: the lists' suites and dates recorded beside the pairs
APT_HELPER = "/usr/lib/apt/apt-helper"
MIN_PASSAGE_CHARS = 40


class DebianDataError(DataError):
    """The Debian data set cannot be built here; the message says what to do instead."""


def cache_dir() -> Path:
    """``$MATRYOSHKA_CACHE`` or ``~/.cache/matryoshka-sweeps``."""
    root = os.environ.get("MATRYOSHKA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "matryoshka-sweeps"
    )
    return Path(root)


def cache_path() -> Path:
    return cache_dir() / f"debian-pairs-v{CACHE_VERSION}.jsonl"


def meta_path() -> Path:
    return cache_dir() / f"debian-pairs-v{CACHE_VERSION}.meta.json"


def load_pairs(rebuild: bool = False) -> list[dict[str, str]]:
    """The cleaned pairs, from the cache when its checksum holds, else built with apt."""
    path = cache_path()
    cached = None if rebuild else read_cache(path)
    if cached is not None and meta_path().is_file():
        return cached
    pairs, releases = build_pairs()
    write_cache(path, pairs)
    meta = {"fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "releases": releases}
    meta_path().write_text(json.dumps(meta, indent=1) + "\n")
    return pairs


def origin() -> dict[str, object]:
    """What the cached set was built from: the lists' suites and Release dates, when fetched,
    and the cache file's sha256 (the fingerprint's ``origin`` for 'debian')."""
    checksum = cache_path().with_suffix(cache_path().suffix + ".sha256")
    meta = json.loads(meta_path().read_text()) if meta_path().is_file() else {}
    return {
        "apt": "Debian package lists (apt-get update against this machine's sources)",
        **meta,
        "cache_sha256": checksum.read_text().strip()[:16] if checksum.is_file() else None,
    }


def parse_release(lines: Iterator[str]) -> dict[str, str]:
    """Origin, Suite, Codename and Date of an (In)Release file's header."""
    wanted = ("Origin", "Suite", "Codename", "Date")
    found: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition(": ")
        if sep and key in wanted:
            found.setdefault(key.lower(), value.strip())
        if line.startswith("MD5Sum:") or line.startswith("SHA256:"):
            break
    return found


def read_cache(path: Path) -> list[dict[str, str]] | None:
    """The pairs ``write_cache`` wrote to ``path``, or None if absent or not matching its sha256."""
    checksum_file = path.with_suffix(path.suffix + ".sha256")
    if not path.is_file() or not checksum_file.is_file():
        return None
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != checksum_file.read_text().strip():
        logger.warning("%s does not match its checksum: rebuilding it", path)
        return None
    return [json.loads(line) for line in data.decode().splitlines()]


def write_cache(path: Path, pairs: list[dict[str, str]]) -> None:
    """Write ``pairs`` as JSONL with a sha256 beside it, atomically (write, then rename)."""
    checksum_file = path.with_suffix(path.suffix + ".sha256")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs).encode()
    # Write-then-rename, so concurrent trials building the cache never read half a file.
    for target, content in (
        (path, data),
        (checksum_file, hashlib.sha256(data).hexdigest().encode()),
    ):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=target.name + ".")
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.replace(tmp, target)
    logger.info("cached %d pairs in %s", len(pairs), path)


def write_cache_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (write, then rename): processes that share the
    cache never read half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def apt_lists(folder: str) -> str:
    """Fetch Debian's package lists (with the English descriptions) into ``folder``/lists with
    apt's own client, as any user may (no lock, no system state touched); the lists' path."""
    if shutil.which("apt-get") is None or not os.path.exists(APT_HELPER):
        raise DebianDataError(
            "the built-in 'debian' and 'wordnet' data sets need apt (Debian/Ubuntu), which is not "
            "on this machine: pass your own pairs instead, e.g. --data pairs.jsonl "
            "--query_column anchor --passage_column positive"
        )
    lists = os.path.join(folder, "lists")
    os.makedirs(os.path.join(lists, "partial"))
    cmd = ["apt-get", "update", "-q", "-o", "Acquire::Languages=en"]
    cmd += ["-o", f"Dir::State::Lists={lists}", "-o", "APT::Get::List-Cleanup=0"]
    cmd += ["-o", "Debug::NoLocking=1"]
    logger.info("fetching Debian's package lists: %s", " ".join(cmd))
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not glob.glob(os.path.join(lists, "*_main_i18n_Translation-en*")):
        raise DebianDataError(
            f"`{' '.join(cmd)}` failed (exit {done.returncode}): {done.stderr.strip()[-500:]}; "
            "the built-in data sets need apt's package lists: pass your own pairs instead "
            "with --data pairs.jsonl"
        )
    return lists


def build_pairs() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Download the package lists with apt; the cleaned pairs and each suite's Release header."""
    with tempfile.TemporaryDirectory(prefix="debian-lists-") as tmp:
        lists = apt_lists(tmp)
        translations = sorted(glob.glob(os.path.join(lists, "*_main_i18n_Translation-en*")))
        descriptions: dict[str, tuple[str, str]] = {}
        for file in translations:
            for package, short, long in parse_translations(_cat(file)):
                descriptions.setdefault(package, (short, long))
        sources: dict[str, str] = {}
        for file in sorted(glob.glob(os.path.join(lists, "*_main_binary-*_Packages*"))):
            sources.update(parse_sources(_cat(file)))
        releases = []
        for file in sorted(glob.glob(os.path.join(lists, "*Release"))):
            with open(file, encoding="utf-8", errors="replace") as f:
                releases.append(parse_release(f))
    return clean(descriptions, sources), releases


def _cat(file: str) -> Iterator[str]:
    """Decompressed lines of an apt list file, through apt's own helper."""
    proc = subprocess.Popen([APT_HELPER, "cat-file", file], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    yield from proc.stdout
    if proc.wait() != 0:
        raise DebianDataError(f"{APT_HELPER} cat-file {file} failed with exit {proc.returncode}")


def parse_translations(lines: Iterator[str]) -> Iterator[tuple[str, str, str]]:
    """Yield (package, short description, long description) from a Translation-en file."""
    package, short, body = None, None, []
    for raw in [*lines, "\n"]:
        line = raw.rstrip("\n")
        if not line:
            if package and short is not None:
                yield package, short.strip(), _render(body)
            package, short, body = None, None, []
        elif line.startswith("Package: "):
            package = line[len("Package: ") :].strip()
        elif line.startswith("Description-en: "):
            short = line[len("Description-en: ") :]
        elif line.startswith(" ") and short is not None:
            body.append(line[1:])


def _render(body: list[str]) -> str:
    # Debian's format: " ." is a blank line between paragraphs; other lines wrap.
    paragraphs, current = [], []
    for line in body:
        if line.strip() == ".":
            if current:
                paragraphs.append(" ".join(current))
            current = []
        else:
            current.append(line.strip())
    if current:
        paragraphs.append(" ".join(current))
    return "\n".join(paragraphs)


def parse_sources(lines: Iterator[str]) -> dict[str, str]:
    """Map binary package -> source package from a Packages file (default: itself)."""
    out: dict[str, str] = {}
    package = None
    for raw in lines:
        if raw.startswith("Package: "):
            package = raw[len("Package: ") :].strip()
            out.setdefault(package, package)
        elif raw.startswith("Source: ") and package:
            out[package] = raw[len("Source: ") :].split()[0]
    return out


def clean(
    descriptions: dict[str, tuple[str, str]], sources: dict[str, str]
) -> list[dict[str, str]]:
    """Drop pairs that would make the retrieval task ambiguous, and log each count.

    - a passage too short to describe anything;
    - a short description that several packages share (one query, many right answers);
    - a long description that several packages share (siblings: one passage, many queries).
    """
    rows = [(package, short, long) for package, (short, long) in sorted(descriptions.items())]
    n_start = len(rows)
    rows = [r for r in rows if len(r[2]) >= MIN_PASSAGE_CHARS and r[1]]
    n_short_passage = n_start - len(rows)
    query_counts = Counter(r[1].casefold() for r in rows)
    passage_counts = Counter(r[2] for r in rows)
    kept = [r for r in rows if query_counts[r[1].casefold()] == 1]
    n_repeated_query = len(rows) - len(kept)
    rows = kept
    kept = [r for r in rows if passage_counts[r[2]] == 1]
    n_shared_passage = len(rows) - len(kept)
    logger.info(
        "Debian pairs: %d packages; dropped %d with a passage under %d chars, %d whose short "
        "description repeats, %d whose long description is shared; kept %d",
        n_start,
        n_short_passage,
        MIN_PASSAGE_CHARS,
        n_repeated_query,
        n_shared_passage,
        len(kept),
    )
    return [
        {
            "anchor": short,
            "positive": long,
            "package": package,
            "source": sources.get(package, package),
        }
        for package, short, long in kept
    ]


def download_packages(packages: list[str], folder: str, what: str) -> Path:
    """Fetch ``packages`` (.deb files, no install: any user may) with apt's own client into
    ``folder`` and unpack them there; the root they were unpacked under. ``what`` names the
    data set in errors."""
    if shutil.which("dpkg-deb") is None:
        raise DebianDataError(
            f"{what} needs apt and dpkg-deb (Debian/Ubuntu): pass your own out-of-domain pairs "
            "instead, e.g. guard: {choose: [{data: other-pairs.jsonl}]}"
        )
    lists = apt_lists(folder)
    cache = os.path.join(folder, "cache")
    os.makedirs(os.path.join(cache, "archives", "partial"), exist_ok=True)
    cmd = ["apt-get", "download", "-q", "-o", f"Dir::State::Lists={lists}"]
    cmd += ["-o", f"Dir::Cache={cache}", "-o", "Debug::NoLocking=1", *packages]
    logger.info("fetching %s: %s", what, " ".join(cmd))
    done = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
    debs = [glob.glob(os.path.join(folder, f"{package}_*.deb")) for package in packages]
    if done.returncode != 0 or not all(debs):
        raise DebianDataError(
            f"`{' '.join(cmd)}` failed (exit {done.returncode}): {done.stderr.strip()[-300:]}; "
            "pass your own out-of-domain pairs instead, e.g. guard: {choose: [{data: "
            "other-pairs.jsonl}]}"
        )
    root = Path(folder, "x")
    for found in debs:
        subprocess.run(["dpkg-deb", "-x", found[0], str(root)], check=True)
    return root
