"""Output precisions: quantization as sentence-transformers does it, their gate per dim, and
the recommended dim, on the tiny model and real Debian pairs."""

from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers.util.quantization import quantize_embeddings

from tests.conftest import gated_tiny
from trainers import gate, precision
from trainers.tasks import pairs_task

DIMS = (384, 128, 64)


@pytest.fixture(scope="module")
def gated(tiny_model_path, debian_sample_file, tmp_path_factory):
    """The tiny model exported and calibrated, with a gate task of 200 queries: (folder,
    config, task)."""
    return gated_tiny(tmp_path_factory, tiny_model_path, debian_sample_file, DIMS, "precision")


def record_of(folder) -> dict:
    from trainers.models import matryoshka_info

    return matryoshka_info(folder)["precisions"]


def test_quantize_is_sentence_transformers_with_the_stored_calibration(gated):
    folder, _, _ = gated
    calibration = precision.load_calibration(folder)
    assert calibration is not None and calibration.shape[1] == 384
    vectors = np.random.default_rng(0).normal(size=(7, 384)).astype(np.float32)
    quantize = precision.Quantizer(calibration)
    for dim in (384, 100, 64):
        at = precision.at_dim(vectors, dim)
        for name in precision.QUANTIZED:
            expected = quantize_embeddings(
                at, name, calibration_embeddings=precision.at_dim(calibration, dim)
            )
            got = quantize(at, name)
            assert got.dtype == expected.dtype, name
            np.testing.assert_array_equal(got, expected)
    assert quantize(precision.at_dim(vectors, 64), "binary").shape == (7, 8)


def test_the_float32_row_is_the_evaluators_metric(gated):
    """The precision table's own ranking code gives the evaluator's MAP@100 and NDCG@10 for
    float32 (ties broken alike), so the quantized rows are measured on the same scale."""
    folder, config, task = gated
    backends = gate.gate(folder, task, config, tolerance=1.0, precision_tolerance=1.0)
    record = record_of(folder)
    for backend in ("torch", "onnx", "onnx-int8"):
        for d in DIMS:
            row = record["backends"][backend]["dims"][str(d)]["float32"]
            assert row["map@100"] == pytest.approx(backends[backend][f"dim_{d}_map@100"], abs=1e-6)
            assert row["ndcg@10"] == pytest.approx(backends[backend][f"dim_{d}_ndcg@10"], abs=1e-6)
            assert row["bytes"] == 4 * d


def test_binary_is_ranked_by_hamming_distance_of_the_packed_bits():
    rng = np.random.default_rng(1)
    q, c = rng.normal(size=(30, 64)), rng.normal(size=(200, 64))
    relevant = [{int(i)} for i in rng.integers(0, 200, size=30)]
    id_order = np.arange(200)
    got = precision.score_precisions(q, c, relevant, id_order, [64], None)[64]["binary"]
    bits_q, bits_c = (precision.Quantizer(None)(precision.at_dim(x, 64), "ubinary") for x in (q, c))
    hamming = np.unpackbits(bits_q[:, None, :] ^ bits_c[None, :, :], axis=-1).sum(-1)
    hits = np.stack([np.lexsort((id_order, row)) for row in hamming.astype(np.int64)])
    assert got["map@100"] == pytest.approx(precision.rank_metrics(hits, relevant)["map@100"])
    assert got["bytes"] == 8


@pytest.mark.parametrize("tolerance", [1.0, 0.0, -1.0])
def test_a_precision_is_allowed_exactly_where_it_is_within_the_tolerance(gated, tolerance):
    folder, config, task = gated
    gate.gate(folder, task, config, tolerance=1.0, precision_tolerance=tolerance)
    record = record_of(folder)
    reference = {d: record["backends"]["torch"]["dims"][str(d)]["float32"]["map@100"] for d in DIMS}
    seen = set()
    for entry in record["backends"].values():
        for d, row in entry["dims"].items():
            for name, metrics in row.items():
                drop = reference[int(d)] - metrics["map@100"]
                assert metrics["drop"] == pytest.approx(drop)
                if name == "float32":
                    assert metrics["allowed"]
                elif name == "binary-rescored":
                    assert not metrics["allowed"]  # needs the float query: never served
                else:
                    assert metrics["allowed"] == (drop <= tolerance), (name, d, drop)
                    seen.add(metrics["allowed"])
            assert row["uint8"]["map@100"] == row["int8"]["map@100"]
            assert row["ubinary"] == row["binary"]
    if tolerance == 1.0:
        assert seen == {True}
    if tolerance == -1.0:
        assert seen == {False}


def test_the_recommended_dim_is_the_smallest_allowed_vector_within_the_loss(gated):
    folder, config, task = gated
    for within in (0.0, 0.05, 1.0):
        gate.gate(folder, task, config, precision_tolerance=0.02, recommend_within=within)
        record = record_of(folder)
        full = record["backends"]["torch"]["dims"]["384"]["float32"]["map@100"]
        for backend, entry in record["backends"].items():
            fits = [
                (m["bytes"], int(d), name)
                for d, row in entry["dims"].items()
                for name, m in row.items()
                if m["allowed"] and full - m["map@100"] <= within
            ]
            best = entry["recommended"]
            if not fits:
                assert best["dim"] is None
                continue
            assert best["bytes"] == min(fits)[0], (backend, within)
            assert full - best["map@100"] <= within
            assert entry["dims"][str(best["dim"])][best["precision"]]["allowed"]
    # Everything allowed, any loss accepted: the smallest vector there is, binary at 64 dims.
    gate.gate(folder, task, config, precision_tolerance=1.0, recommend_within=1.0)
    best = record_of(folder)["backends"]["torch"]["recommended"]
    assert (best["dim"], best["precision"], best["bytes"]) == (64, "binary", 8)


def test_a_gate_on_too_few_queries_allows_only_float32(gated):
    folder, config, _ = gated
    gate.gate(folder, pairs_task(config, 200, 63, seed=0), config, precision_tolerance=1.0)
    record = record_of(folder)
    assert record["undecided"].startswith("63 queries")
    for entry in record["backends"].values():
        for row in entry["dims"].values():
            assert [name for name, m in row.items() if m["allowed"]] == ["float32"]
        assert entry["recommended"]["precision"] == "float32"


def test_the_table_marks_what_is_refused(gated):
    folder, config, task = gated
    gate.gate(folder, task, config, precision_tolerance=-1.0)
    lines = precision.precision_table(record_of(folder), "torch")
    assert lines[0].startswith("| precision | @384 | @128 | @64 |")
    int8 = next(line for line in lines if line.startswith("| int8, uint8 |"))
    assert int8.count("(no)") == 3 and "| 384 / 128 / 64 |" in int8
    assert next(line for line in lines if line.startswith("| binary, ubinary |")).endswith(
        "| 48 / 16 / 8 |"
    )
