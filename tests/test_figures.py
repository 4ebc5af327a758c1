"""Every figure table in README.md and benchmarks/README.md comes from a results file.

A Markdown table with a decimal figure in its body must have, within the lines just above it,
a marker naming the file(s) its figures come from:

    <!-- figures: benchmarks/results/quality.md -->

and each decimal figure in its body (0.6947, 1.36x, 7.2 ms, +0.0129: the number, sign and unit
dropped) must occur in one of those files. A figure copied wrong, rounded differently or left
stale after a rerun fails this check; so does a table of figures that cites nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", "benchmarks/README.md"]
MARKER = re.compile(r"<!--\s*figures:\s*(.+?)\s*-->")
NUMBER = re.compile(r"(?<![\w.])[-+]?(\d+\.\d+)(?![\d.]*\d)")
LOOK_BACK = 4  # lines above a table in which its marker may stand


def tables(lines: list[str]) -> list[tuple[int, list[str]]]:
    """(index of the first line, the lines) of each Markdown table."""
    found, start = [], None
    for i, line in enumerate([*lines, ""]):
        if line.startswith("|") and start is None:
            start = i
        elif not line.startswith("|") and start is not None:
            found.append((start, lines[start:i]))
            start = None
    return found


def figures(body: list[str]) -> list[str]:
    """The decimal numbers in a table's body rows (its header and rule line skipped)."""
    return [number for row in body[2:] for number in NUMBER.findall(row)]


def occurs(number: str, text: str) -> bool:
    return re.search(rf"(?<![\d.]){re.escape(number)}(?![\d])", text) is not None


def check(document: str, root: Path = REPO) -> list[str]:
    """What is wrong with ``document``'s figure tables: one line per problem."""
    lines = (root / document).read_text().splitlines()
    problems = []
    for start, body in tables(lines):
        numbers = figures(body)
        if not numbers:
            continue
        cited = [
            path.strip()
            for line in lines[max(0, start - LOOK_BACK) : start]
            if (marker := MARKER.search(line))
            for path in marker.group(1).split(",")
        ]
        where = f"{document}:{start + 1}"
        if not cited:
            problems.append(f"{where}: a table of figures with no <!-- figures: FILE --> above")
            continue
        missing_files = [path for path in cited if not (root / path).is_file()]
        if missing_files:
            problems.append(f"{where}: cites {missing_files}, which do not exist")
            continue
        text = "\n".join((root / path).read_text() for path in cited)
        problems += [
            f"{where}: {number} is not in {', '.join(cited)}"
            for number in numbers
            if not occurs(number, text)
        ]
    return problems


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_figure_table_comes_from_the_results_file_it_cites(document):
    problems = check(document)
    assert not problems, "\n".join(problems)


def test_the_check_fails_on_a_changed_figure_and_an_uncited_table(tmp_path):
    (tmp_path / "results.md").write_text("| dim | MAP |\n|---|---|\n| 64 | 0.6947 |\n")
    cited = "<!-- figures: results.md -->\n\n| dim | MAP@100 |\n|---:|---:|\n| 64 | {} |\n"
    (tmp_path / "good.md").write_text(cited.format("0.6947"))
    (tmp_path / "changed.md").write_text(cited.format("0.6948"))
    (tmp_path / "rounded.md").write_text(cited.format("0.69"))
    (tmp_path / "uncited.md").write_text("| dim | MAP@100 |\n|---:|---:|\n| 64 | 0.6947 |\n")
    assert check("good.md", tmp_path) == []
    assert check("changed.md", tmp_path) == ["changed.md:3: 0.6948 is not in results.md"]
    assert check("rounded.md", tmp_path) == ["rounded.md:3: 0.69 is not in results.md"]
    assert "no <!-- figures" in check("uncited.md", tmp_path)[0]
