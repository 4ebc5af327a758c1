"""ONNX Runtime backends of a model folder: the export equals encode, the gate refuses what
loses quality, and bad input leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

from serve import backend_choice as serving
from trainers import encoders, export, gate
from trainers.config import TrainConfig
from trainers.errors import ModelError
from trainers.tasks import pairs_task

TEXTS = ["a terminal text editor", "Python bindings for Qt", "network time daemon", "x" * 400]
DIMS = (384, 128, 64)


@pytest.fixture(scope="module")
def exported(tiny_model_path, tmp_path_factory):
    folder = shutil.copytree(tiny_model_path, tmp_path_factory.mktemp("onnx") / "tiny")
    export.export(folder)
    return folder


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_the_export_writes_sentence_transformers_layout(exported):
    assert (exported / "onnx" / "model.onnx").is_file()
    assert (exported / "onnx" / "model_qint8.onnx").is_file()
    assert encoders.available(exported) == ["torch", "onnx", "onnx-int8"]


def test_onnx_fp32_equals_encode_at_every_dim(exported):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(exported), device="cpu")
    expected = model.encode(TEXTS, normalize_embeddings=True)
    got = encoders.OnnxEncoder(exported, "onnx").encode(TEXTS)
    for dim in DIMS:  # truncated, then re-normalised, as the server does
        np.testing.assert_allclose(unit(got[:, :dim]), unit(expected[:, :dim]), atol=1e-5)


def test_token_counts_come_from_the_encoded_tokenization(exported):
    """The server's `usage`: each text's tokens, special tokens included, truncated as encoded."""
    from sentence_transformers import SentenceTransformer

    texts = [*TEXTS, "a text longer than the model's max_seq_length " * 20]
    encoder = encoders.OnnxEncoder(exported, "onnx")
    vectors, counts = encoder.encode_counted(texts, batch_size=3)  # two batches, longest first
    model = SentenceTransformer(str(exported), device="cpu")
    ids = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]
    assert counts == [len(i) for i in ids] and counts[-1] == encoder.max_seq_length
    np.testing.assert_array_equal(vectors, encoder.encode(texts, batch_size=3))


def test_int8_is_close_but_not_equal(exported):
    fp32 = encoders.OnnxEncoder(exported, "onnx").encode(TEXTS)
    int8 = encoders.OnnxEncoder(exported, "onnx-int8").encode(TEXTS)
    cosine = (fp32 * int8).sum(axis=1)
    # Per-channel int8 of the tiny model: 0.99+ here (per-tensor, refused, gave 0.83 on MiniLM).
    assert cosine.min() > 0.98 and not np.allclose(fp32, int8, atol=1e-6)


def gate_config(exported, data):
    """What the gate scores with: the exported model on real Debian pairs."""
    return TrainConfig(
        model=str(exported),
        data=str(data),
        group_column="source",
        matryoshka_dims=DIMS,
        max_seq_length=64,
    )


def gate_task(config):
    """Enough queries for the gate to decide (MIN_GATE_QUERIES), from 600 real pairs."""
    return pairs_task(config, 600, gate.MIN_GATE_QUERIES, seed=0)


def test_the_gate_at_its_own_tolerance(exported, debian_sample_file):
    """At the default tolerance, each backend is gated exactly when its MAP@100 drop against
    torch is within it at every dim; ONNX fp32 is torch's computation, so it always passes."""
    config = gate_config(exported, debian_sample_file)
    record = gate.gate(exported, gate_task(config), config)
    assert record["tolerance"] == gate.DEFAULT_TOLERANCE and "undecided" not in record
    for backend in ("onnx", "onnx-int8"):
        drops = [
            record["torch"][f"dim_{d}_map@100"] - record[backend][f"dim_{d}_map@100"] for d in DIMS
        ]
        assert record[backend]["largest_drop"] == pytest.approx(max(drops))
        assert record[backend]["gated"] == (max(drops) <= gate.DEFAULT_TOLERANCE)
    assert record["onnx"]["gated"] and abs(record["onnx"]["largest_drop"]) < 1e-3


def test_the_gate_refuses_a_backend_outside_the_tolerance(exported, debian_sample_file):
    config = gate_config(exported, debian_sample_file)
    task = gate_task(config)
    # A tolerance just under int8's measured largest drop (which may be ~0 on the tiny model).
    drop = gate.gate(exported, task, config, tolerance=1.0)["onnx-int8"]["largest_drop"]
    record = gate.gate(exported, task, config, tolerance=drop - 1e-6)
    assert record["torch"]["gated"] and record["torch"]["largest_drop"] == 0
    assert not record["onnx-int8"]["gated"], "int8 lost nothing on any dim"
    # The server refuses it by default, says why, and serves it only when told to.
    with pytest.raises(ModelError, match="not servable by default.*--allow-ungated"):
        serving.choose("onnx-int8", exported, cuda=False, allow_ungated=False)
    backend, why = serving.choose("onnx-int8", exported, cuda=False, allow_ungated=True)
    assert backend == "onnx-int8" and "over the tolerance" in why
    assert serving.choose("auto", exported, cuda=True, allow_ungated=False)[0] == "torch"
    table = "\n".join(gate.gate_table(record, list(DIMS)))
    assert "| onnx-int8 |" in table and "needs --allow-ungated" in table


def test_a_gate_on_too_few_queries_decides_nothing(exported, debian_sample_file):
    """63 queries (a smoke sweep's validation): one query's rank moves MAP@100 by more than
    the tolerance, so no backend is gated however it scored, and auto serves torch."""
    config = gate_config(exported, debian_sample_file)
    task = pairs_task(config, 200, 63, seed=0)
    record = gate.gate(exported, task, config, tolerance=1.0)
    assert record["undecided"].startswith("63 queries")
    assert not record["onnx"]["gated"] and not record["onnx-int8"]["gated"]
    backend, why = serving.choose("auto", exported, cuda=False, allow_ungated=False)
    assert backend == "torch" and "could not decide" in why
    with pytest.raises(ModelError, match="could not decide"):
        serving.choose("onnx", exported, cuda=False, allow_ungated=False)


def test_auto_serves_the_fastest_gated_backend(exported, debian_sample_file):
    config = gate_config(exported, debian_sample_file)
    record = gate.gate(exported, gate_task(config), config, tolerance=1.0)
    assert record["onnx-int8"]["gated"]
    assert serving.choose("auto", exported, cuda=False, allow_ungated=False)[0] == "onnx-int8"


def test_export_refuses_a_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ModelError, match="not a sentence-transformers model folder"):
        export.export(tmp_path)
    assert not (tmp_path / "onnx").exists()


def read_only(folder) -> list[list[str]]:
    """Make ``folder`` unwritable for this process; the commands that undo it.

    Root ignores mode bits, so as root: the immutable attribute (ext4, xfs: chattr), else a
    read-only bind mount (a container with CAP_SYS_ADMIN). Neither is a skip: the test fails
    and says so, since the claim would otherwise go untested where CI runs as root."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return [["chmod", "755", str(folder)]]
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        return [["chattr", "-i", str(folder)]]
    bind = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if bind.returncode == 0:
        undo = [["umount", str(folder)]]
        remount = ["mount", "-o", "remount,bind,ro", str(folder)]
        if subprocess.run(remount, capture_output=True).returncode == 0:
            return undo
        subprocess.run(undo[0])
    pytest.fail(f"as root, neither chattr +i nor a read-only bind mount works on {folder}")


def test_export_refuses_an_unwritable_folder(tiny_model_path, tmp_path):
    folder = shutil.copytree(tiny_model_path, tmp_path / "ro")
    undo = read_only(folder)
    try:
        with pytest.raises(ModelError, match="cannot write"):
            export.export(folder)
        assert not (folder / "onnx").exists()
    finally:
        for command in undo:
            subprocess.run(command, check=True)


def test_a_failed_check_leaves_no_onnx_folder(tiny_model_path, tmp_path, monkeypatch):
    folder = shutil.copytree(tiny_model_path, tmp_path / "tiny")
    # A tolerance nothing can meet: the export is built, checked, refused and removed.
    with pytest.raises(ModelError, match="differs from encode"):
        export.export(folder, check_atol=-1.0)
    assert not (folder / "onnx").exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(".onnx-")]


def test_the_command_exits_2_on_a_bad_folder(tmp_path, capsys):
    assert export.main([str(tmp_path / "missing")]) == 2
    assert "not a sentence-transformers model folder" in capsys.readouterr().err


def test_length_groups_keep_like_lengths_together_and_never_split_a_text():
    from trainers.encoders import length_groups

    lengths = [300, 12, 9, 280, 10, 160, 11]
    groups = length_groups(lengths, max_size=8)
    assert groups == [[0, 3, 5], [1, 6, 4, 2]]  # 160 > 300/2 joins; the queries go apart
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert length_groups([5] * 10, max_size=4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_a_batch_mixing_a_long_text_with_short_ones_encodes_each_as_alone(exported, backend):
    from trainers.encoders import TorchEncoder
    from trainers.models import load_model

    if backend == "torch":
        encoder = TorchEncoder(load_model(str(exported), device="cpu"))
    else:
        encoder = encoders.OnnxEncoder(exported, backend)
    texts = ["a text editor", "library for parsing XML documents " * 40, "GNU C compiler", "x"]
    batch, counts = encoder.encode_counted(texts)
    for text, vector, count in zip(texts, batch, counts, strict=True):
        alone, (alone_count,) = encoder.encode_counted([text])
        np.testing.assert_allclose(vector, alone[0], atol=1e-5)
        assert count == alone_count
    assert counts[1] > 10 * counts[0]  # the long one really is long
