"""Benchmarks are not tests, but their smoke modes run here so they cannot rot."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def smoke(script: str, results: Path, *extra: str, timeout: int = 300) -> str:
    done = subprocess.run(
        [
            sys.executable,
            f"benchmarks/{script}.py",
            "--smoke",
            "--results-dir",
            str(results),
            *extra,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = (results / f"{script}.md").read_text()
    assert f"command: `python benchmarks/{script}.py --smoke" in text
    assert "- machine: " in text and "- wall time of the whole benchmark: " in text
    return text


def figure(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    assert found, f"{pattern!r} not in:\n{text}"
    return float(found.group(1))


def test_eval_speed_smoke(tmp_path):
    text = smoke("eval_speed", tmp_path)
    # Encoding once for every dim is faster than encoding once per dim, with the same metrics.
    assert figure(r"\*\*speed-up: ([\d.]+)x\*\*", text) > 1.2
    assert figure(r"largest difference over \d+ metrics: ([\d.e+-]+)", text) <= 1e-6
    assert "- data: debian (package lists fetched " in text


def test_throughput_smoke(tmp_path):
    text = smoke("throughput", tmp_path)
    rate = figure(r"Training: \*\*([\d.]+) pairs/s\*\*", text)
    encode = figure(r"\| encode only \(no gradients\) \|[^|]+\|[^|]+\|[^|]+\| ([\d.]+) \|", text)
    assert rate > 0 and encode > rate  # no backward pass: encoding the same pairs is faster


INTERVAL = re.compile(r"([-+]\d+\.\d+) \[([-+]\d+\.\d+), ([-+]\d+\.\d+)\]")


@pytest.mark.slow
def test_quality_smoke(tmp_path, smoke_sweep):
    code, sweep, output = smoke_sweep  # the session's smoke sweep (tests/conftest.py)
    assert code == 0, output[-3000:]
    text = smoke("quality", tmp_path, "--sweep", str(sweep), timeout=900)
    assert "| target | result | figures |" in text
    assert "seed recipe, 4 epochs (authors')" in text and "the splits match" in text
    assert "The export's output precisions" in text and "| int8, uint8 |" in text
    # The export scored here is the export the sweep scored, on the same split.
    assert figure(r"differs from the sweep's own by at most (\d\.\de[+-]\d+)", text) < 1e-4
    record = json.loads((sweep / "best" / "metrics.json").read_text())
    dims = [int(d) for d in record["config"]["matryoshka_dims"]]
    for dim in dims:
        row = re.search(rf"^\| {dim} \| ([\d.]+) \| ", text, re.M)
        base = record["test"]["base"][f"dim_{dim}_cosine_map@100"]
        assert row and float(row.group(1)) == pytest.approx(base, abs=1.5e-4)
    # Each verdict follows its figures: a difference with its bootstrap interval around it.
    verdicts = dict(re.findall(r"^\| ([^|]+?) \| \*\*(met|not met)\*\* \| ", text, re.M))
    assert len(verdicts) == 4, verdicts
    for target, verdict in verdicts.items():
        detail = re.search(rf"^\| {re.escape(target)} \| \*\*[a-z ]+\*\* \| (.+) \|$", text, re.M)
        if target.startswith("verifying guard"):
            numbers = [float(x) for x in re.findall(r"[-+]\d+\.\d+", detail.group(1))]
            holds = all(x >= -0.01 for x in numbers)
        else:
            intervals = [tuple(map(float, m)) for m in INTERVAL.findall(detail.group(1))]
            assert intervals and all(low <= diff <= high for diff, low, high in intervals)
            if target.startswith("pipeline - base"):
                holds = all(low > 0 for _, low, _ in intervals)
            else:
                holds = all(diff >= 0.02 and low > 0 for diff, low, _ in intervals)
        assert (verdict == "met") == holds, f"{target}: {verdict} but {detail.group(1)}"


@pytest.mark.slow
def test_sweep_overhead_smoke(tmp_path):
    text = smoke("sweep_overhead", tmp_path, "--no-wandb", timeout=600)
    # A trial does the direct run's work plus Tune's: it cannot take less wall time.
    assert figure(r"wall-time ratio, sweep / direct: ([\d.]+)x", text) >= 1.0
    assert "**Time to the first training step:" in text


@pytest.mark.slow
def test_serving_smoke(tmp_path):
    text = smoke("serving", tmp_path, timeout=600)
    assert (
        "| load | server | req/s | texts/s | tokens/s | p50 ms | p99 ms | failed | resent |" in text
    )
    assert "our default backend (`--backend auto`)" in text and "| onnx-int8 |" in text
    assert "Ours: `python serve/app.py --model FOLDER --port P`" in text
    assert re.search(r"\| 1 \| ours \| refused from [\d.]+ s;.* 200 from [\d.]+ s \|", text), text
    # The load table's rows of ours (11 cells; the start-up table's have 4): every answer a 200.
    rows = [r.split("|") for r in re.findall(r"^\| [^|]+ \| ours \|.*$", text, flags=re.M)]
    loads = [cells for cells in rows if len(cells) == 11]
    assert len(loads) == 4 and all(cells[8].strip() == "0" for cells in loads), loads
    # Serve adds HTTP and batching to the same backend's encode of the same batches: a fraction
    # of it with a tiny model (HTTP dominates), never far above it.
    ratio = figure(r"ours / in-process encode of the same batches \| >= 0.9 \| ([\d.]+)", text)
    assert 0.02 < ratio < 1.5, ratio
    assert (
        figure(
            r"queries under documents, 2 clients \+ 1 sending 32 passages, ours: query p50 "
            r"[\d.]+ \([\d.]+\) ms, p99 ([\d.]+)",
            text,
        )
        > 0
    )


@pytest.mark.slow
def test_hard_negatives_smoke(tmp_path):
    text = smoke("hard_negatives", tmp_path, timeout=600)
    effects = re.findall(r"^\| (.+?) - in-batch only \| (.+) \|$", text, re.M)
    assert [label for label, _ in effects] == [
        "1 negative, margin 0.05",
        "3 negatives, margin 0.05",
        "1 negative, no margin",
    ]
    for _, cells in effects:
        intervals = [tuple(map(float, m)) for m in INTERVAL.findall(cells)]
        assert len(intervals) == 4 and all(low <= diff <= high for diff, low, high in intervals)
    # Each mined variant says what it mined; the margin filtered candidates where it was set.
    mined = re.findall(r"(\d+) of 48 pairs with (\d) mined negative", text)
    assert [n for _, n in mined] == ["1", "3", "1"] and all(int(k) > 40 for k, _ in mined)
    assert "relative margin 0.05" in text
