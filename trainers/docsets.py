"""Built-in out-of-domain sets for the guard: questions against FAQs and documentation.

A guard set stands for what users search outside the fine-tuning domain. Dictionary glosses
alone (``wordnet``) are nothing like that: a fine-tune on Debian descriptions lost up to 0.04
MAP@100 on FAQ-style sets while WordNet moved by 0.003. These sets are built offline from
documentation that Debian ships (fetched with apt's own client, like the 'debian' pairs, once,
then cached) and from the Python standard library's own source:

- ``vim-faq``: the Vim FAQ (368 entries), question -> its answer; Debian package vim-doc.
- ``unix-faqs``: the zsh, sed, git and GNU screen FAQs (138), question -> answer; Debian
  packages zsh-doc, sed, git-doc and screen.
- ``python-docstrings``: the standard library's docstrings (about 1,200), a docstring's summary
  line -> the rest of it; read from this interpreter's ``Lib/`` with ``ast`` (nothing imported).

None of them is built from man pages, the Python FAQ or the Debian FAQ: those three are kept
outside this repository to check the exported model independently of anything the sweep chose.

    from trainers import docsets
    pairs = docsets.load_pairs("vim-faq")     # [{"anchor": question, "positive": answer, ...}]
"""

from __future__ import annotations

import ast
import gzip
import html
import logging
import re
import sys
import sysconfig
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from trainers.debian import cache_dir, download_packages, read_cache, write_cache

logger = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: no pair whose question is in its answer
MIN_ANSWER_WORDS = 8
# Each FAQ, by the package that ships it: name -> (package, path inside it, parser).
FAQS = {
    "vim": ("vim-doc", "usr/share/doc/vim/FAQ.gz", "numbered"),
    "sed": ("sed", "usr/share/doc/sed/sedfaq.txt.gz", "numbered"),
    "git": ("git-doc", "usr/share/doc/git-doc/gitfaq.txt", "asciidoc"),
    "screen": ("screen", "usr/share/doc/screen/FAQ.gz", "q-and-a"),
    "zsh": ("zsh-doc", "usr/share/doc/zsh-common/html", "zsh-html"),
}
SETS = {"vim-faq": ("vim",), "unix-faqs": ("zsh", "sed", "git", "screen")}
NAMES = (*SETS, "python-docstrings")


def cache_path(name: str) -> Path:
    return cache_dir() / f"{name}-pairs-v{CACHE_VERSION}.jsonl"


def load_pairs(name: str) -> list[dict[str, str]]:
    """The pairs of built-in set ``name``, from the cache, else built (once per machine)."""
    path = cache_path(name)
    cached = read_cache(path)
    if cached is not None:
        return cached
    if name == "python-docstrings":
        write_cache(path, python_docstrings())
    else:  # every FAQ set from one apt download
        for other, pairs in faq_sets().items():
            write_cache(cache_path(other), pairs)
    return read_cache(path)


def origin(name: str) -> dict[str, object]:
    """What the cached set is built from, and the cache file's sha256."""
    checksum = cache_path(name).with_suffix(".jsonl.sha256")
    if name == "python-docstrings":
        source = f"docstrings of Python {sys.version.split()[0]}'s standard library"
    else:
        source = "Debian packages " + ", ".join(FAQS[faq][0] for faq in SETS[name])
    return {
        "source": source,
        "cache_sha256": checksum.read_text().strip()[:16] if checksum.is_file() else None,
    }


def faq_sets() -> dict[str, list[dict[str, str]]]:
    """Every FAQ set's (question -> answer) pairs, from one apt download of their packages."""
    packages = sorted({package for package, _, _ in FAQS.values()})
    entries: dict[str, list[tuple[str, str, str]]] = {}
    with tempfile.TemporaryDirectory(prefix="faqs-") as tmp:
        root = download_packages(packages, tmp, "the built-in FAQ guard sets")
        for faq, (_, path, parser) in FAQS.items():
            found = list(PARSERS[parser](root / path))
            logger.info("%s FAQ: %d entries", faq, len(found))
            entries[faq] = [(f"{faq}:{n}", q, a) for n, (q, a) in enumerate(found)]
    return {name: clean([e for faq in faqs for e in entries[faq]]) for name, faqs in SETS.items()}


def clean(entries: list[tuple[str, str, str]]) -> list[dict[str, str]]:
    """One pair per question that appears once, has an answer of some substance and is not
    in its answer word for word (a lookup, not a search)."""
    entries = [(g, squash(q), squash(a)) for g, q, a in entries]
    counts = Counter(q.casefold() for _, q, _ in entries)
    return [
        {"anchor": q, "positive": a, "entry": g}
        for g, q, a in entries
        if q
        and counts[q.casefold()] == 1
        and len(a.split()) >= MIN_ANSWER_WORDS
        and q.casefold() not in a.casefold()
    ]


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def read_text(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        return f.read()


# "5.1. How do I load a file in Vim for editing?" (the Vim and sed FAQs): a question may wrap
# onto indented lines and ends at the first blank line; its answer runs to the next entry.
NUMBERED = re.compile(r"^(\d+\.\d+)\.\s+(\S.*)$")


def numbered(path: Path) -> Iterator[tuple[str, str]]:
    lines = read_text(path).splitlines()
    starts = [i for i, line in enumerate(lines) if NUMBERED.match(line)]
    # The table of contents lists every question once before the answers: keep the last
    # occurrence of each number (the one with the answer under it).
    last = {NUMBERED.match(lines[i]).group(1): i for i in starts}
    bounds = sorted(last.values())
    for i, start in enumerate(bounds):
        end = bounds[i + 1] if i + 1 < len(bounds) else len(lines)
        block = lines[start:end]
        blank = next((j for j, line in enumerate(block) if not line.strip()), len(block))
        question = NUMBERED.match(block[0]).group(2) + " " + " ".join(block[1:blank])
        answer = "\n".join(block[blank:])
        # Stop an answer at the next section heading ("SECTION 6 - ..." or an all-caps line).
        answer = re.split(r"\n\s*(?:SECTION \d+|[A-Z][A-Z ,&/-]{8,})\s*\n", answer)[0]
        if question.rstrip().endswith("?"):
            yield question, answer


def asciidoc(path: Path) -> Iterator[tuple[str, str]]:
    """gitfaq.txt: ``[[anchor]]``, then ``Question?::`` (an asciidoc definition list), then its
    answer up to the next anchor or section heading."""
    text = read_text(path)
    for block in re.split(r"\n\[\[[\w-]+\]\]\n", text)[1:]:
        question, sep, answer = block.partition("::\n")
        if sep and question.strip().endswith("?"):
            yield question, re.split(r"\n\S.*\n[-~=^]{3,}\n", answer)[0].replace("\n+\n", "\n")


def q_and_a(path: Path) -> Iterator[tuple[str, str]]:
    """GNU screen's FAQ: ``Q: ...`` paragraphs, each followed by ``A: ...``."""
    text = read_text(path)
    for block in re.split(r"\n\s*\nQ:", "\n\n" + text)[1:]:
        question, sep, answer = block.partition("\nA:")
        if sep:
            answer = re.split(r"\n\s*\n\S", answer)[0]
            yield question, answer


def zsh_html(folder: Path) -> Iterator[tuple[str, str]]:
    """The zsh FAQ's HTML chapters: each ``<h2>N.M: question</h2>`` and the text after it."""
    for page in sorted(folder.glob("FAQ0*.html")):
        body = page.read_text(encoding="utf-8", errors="replace")
        parts = re.split(r"<h2[^>]*>(.*?)</h2>", body, flags=re.S)
        for title, content in zip(parts[1::2], parts[2::2], strict=True):
            question = re.sub(r"^\s*\d+\.\d+:\s*", "", text_of(title))
            answer = text_of(re.split(r"<h[12][^>]*>|<hr", content)[0])
            yield question, answer


def text_of(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", fragment))


PARSERS = {"numbered": numbered, "asciidoc": asciidoc, "q-and-a": q_and_a, "zsh-html": zsh_html}


def python_docstrings() -> list[dict[str, str]]:
    """(summary line -> rest of the docstring) of the standard library's public functions,
    classes and methods. Read with ``ast``: no module is imported (some act on import)."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "idlelib", "lib2to3", "site-packages", "dist-packages", "turtledemo"}
    entries = []
    for path in sorted(lib.rglob("*.py")):
        parts = path.relative_to(lib).parts
        if skip & set(parts) or any(p.startswith("_") for p in parts):
            continue
        module = ".".join(path.relative_to(lib).with_suffix("").parts)
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
            if not isinstance(node, kinds) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            summary, _, rest = doc.strip().partition("\n\n")
            if len(summary.split()) >= 4 and "\n" not in summary.strip():
                entries.append((module, summary, rest))
    return clean(entries)
