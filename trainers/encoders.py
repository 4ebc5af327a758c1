"""What turns texts into unit-length embeddings: one ``Encoder`` interface, two implementations.

``TorchEncoder`` wraps sentence-transformers' own encode; ``OnnxEncoder`` runs a folder's ONNX
export (``python -m trainers.export FOLDER`` writes it) with ONNX Runtime, fp32 or int8,
needing neither torch nor sentence-transformers. The server (serve/) encodes with either; the
gate (trainers/gate.py) scores the ONNX ones against torch before they may be served.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import numpy as np

from trainers.errors import ModelError

# Texts per ONNX Runtime call. A call pads every text to the longest in it, and texts are
# sorted by length before they are cut into calls, so small calls compute little padding. Per
# call overhead is small, so 8 was fastest on MiniLM with one and two threads (measured:
# `git show 82e79b2`).
ENCODE_CHUNK = 8

# A group of texts encoded together is padded to its longest, so texts are grouped by length:
# sorted longest first, a group ends where the next text has at most this fraction of the
# group's longest (or the group is full). A 300-token passage then no longer pads the 10-token
# queries that arrived in the same batch to 300 tokens each.
GROUP_LENGTH_RATIO = 0.5


def length_groups(lengths: list[int], max_size: int) -> list[list[int]]:
    """Indices of ``lengths`` in groups to encode together: longest first, at most
    ``max_size`` each, and none padding a text to more than 1 / GROUP_LENGTH_RATIO of its
    length (a text is never split)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        group = groups[-1] if groups else None
        if (
            group is None
            or len(group) >= max_size
            or lengths[i] <= GROUP_LENGTH_RATIO * lengths[group[0]]
        ):
            groups.append([i])
        else:
            group.append(i)
    return groups


ONNX_DIR = "onnx"
FILES = {"onnx": "model.onnx", "onnx-int8": "model_qint8.onnx"}
BACKENDS = ("torch", "onnx", "onnx-int8")
ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": lambda x: x,
    "torch.nn.modules.activation.Tanh": np.tanh,
    "torch.nn.modules.activation.ReLU": lambda x: np.maximum(x, 0),
}


class Encoder(Protocol):
    """What the server and the gate need of an encoder."""

    backend: str
    dim: int
    max_seq_length: int
    prompts: dict[str, str]

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 embeddings, one row per text."""
        ...

    def encode_counted(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        """``encode``, and each text's token count (a response's ``usage``)."""
        ...


class TorchEncoder:
    """sentence-transformers' own encode, behind the same interface as the ONNX encoder."""

    backend = "torch"

    def __init__(self, model) -> None:
        self.model = model
        self.dim = int(model.get_embedding_dimension())
        self.max_seq_length = int(model.max_seq_length)
        self.prompts: dict[str, str] = dict(model.prompts)

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.encode_counted(texts)[0]

    def encode_counted(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        """``encode``, and each text's token count (a response's ``usage``)."""
        # encode() tokenizes inside sentence-transformers, out of reach: count in one more call,
        # whose lengths also group the texts by length (length_groups).
        encoded = self.model.tokenizer(texts, truncation=True, max_length=self.max_seq_length)
        counts = [len(ids) for ids in encoded["input_ids"]]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for rows in length_groups(counts, max(1, len(texts))):
            out[rows] = self.model.encode(
                [texts[i] for i in rows],
                batch_size=len(rows),
                convert_to_numpy=True,
                normalize_embeddings=True,
            )
        return out, counts


class OnnxEncoder:
    """Encodes texts with ONNX Runtime the way the folder's sentence-transformers model does
    (its tokenizer, max length, pooling, Dense layers): unit-length float32 embeddings."""

    def __init__(
        self,
        model_folder: str | Path,
        backend: str = "onnx",
        threads: int | None = None,
        folder: Path | None = None,
    ) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.folder = Path(folder or Path(model_folder) / ONNX_DIR)
        if backend not in FILES or not (self.folder / FILES[backend]).is_file():
            raise ModelError(
                f"{model_folder}: no {backend} export: run python -m trainers.export {model_folder}"
            )
        self.backend = backend
        self.pipeline = json.loads((self.folder / "pipeline.json").read_text())
        self.max_seq_length = self.pipeline["max_seq_length"]
        self.prompts: dict[str, str] = self.pipeline.get("prompts", {})
        self.dim = int(self.pipeline["dim"])
        modules = json.loads((Path(model_folder) / "modules.json").read_text())
        self.tokenizer = AutoTokenizer.from_pretrained(str(Path(model_folder) / modules[0]["path"]))
        options = ort.SessionOptions()
        if threads is not None:
            # A replica's CPU share: one thread per reserved core, none spinning between calls.
            # Spinning (ONNX Runtime's default) makes threads alone on a machine faster
            # (`git show 6ab4170`), but a replica shares its cores with its HTTP work and other
            # processes, from which a spinning thread takes CPU; one thread has no pool to spin.
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(self.folder / FILES[backend]), options, providers=["CPUExecutionProvider"]
        )
        self.dense = {
            step["file"]: dict(np.load(self.folder / step["file"]))
            for step in self.pipeline["steps"]
            if step["type"] == "dense"
        }

    def encode(self, texts: list[str], batch_size: int = ENCODE_CHUNK) -> np.ndarray:
        """Unit-length embeddings of ``texts`` (float32, one row per text)."""
        return self.encode_counted(texts, batch_size)[0]

    def encode_counted(
        self, texts: list[str], batch_size: int = ENCODE_CHUNK
    ) -> tuple[np.ndarray, list[int]]:
        """``encode``, and each text's token count (a response's ``usage``) from the same
        tokenization: a second tokenizer call per batch is a cost the server need not pay."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32), []
        # One tokenizer call for all, unpadded; each group of like lengths (length_groups) is
        # then padded to its own longest only.
        tokens = self.tokenizer(texts, truncation=True, max_length=self.max_seq_length)
        counts = [len(ids) for ids in tokens["input_ids"]]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for rows in length_groups(counts, batch_size):
            out[rows] = self._encode_batch(self._pad(tokens, rows))
        return out, counts

    def _pad(self, tokens, rows: list[int]) -> dict[str, np.ndarray]:
        """The token lists of ``rows`` as arrays padded to their longest, on the tokenizer's
        padding side, with the attention mask."""
        longest = max(len(tokens["input_ids"][i]) for i in rows)
        left = self.tokenizer.padding_side == "left"
        batch = {}
        for name in {*self.pipeline["inputs"], "attention_mask"}:
            fill = self.tokenizer.pad_token_id if name == "input_ids" else 0
            array = np.full((len(rows), longest), fill, dtype=np.int64)
            for r, i in enumerate(rows):
                sequence = tokens[name][i] if name in tokens else [1] * len(tokens["input_ids"][i])
                if left:
                    array[r, longest - len(sequence) :] = sequence
                else:
                    array[r, : len(sequence)] = sequence
            batch[name] = array
        return batch

    def _encode_batch(self, tokens) -> np.ndarray:
        feeds = {n: tokens[n].astype(np.int64) for n in self.pipeline["inputs"]}
        hidden = self.session.run(["last_hidden_state"], feeds)[0]
        mask = tokens["attention_mask"][..., None].astype(np.float32)
        x = hidden
        for step in self.pipeline["steps"]:
            if step["type"] == "pooling":
                if step["mode"] == "mean":
                    x = (x * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
                elif step["mode"] == "cls":
                    x = x[:, 0]
                else:
                    x = np.where(mask > 0, x, -1e9).max(axis=1)
            elif step["type"] == "dense":
                weights = self.dense[step["file"]]
                x = ACTIVATIONS[step["activation"]](x @ weights["weight"].T + weights["bias"])
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def available(folder: str | Path) -> list[str]:
    """The backends a folder can serve: torch always, the ONNX ones it holds."""
    onnx = Path(folder) / ONNX_DIR
    return ["torch"] + [b for b, f in FILES.items() if (onnx / f).is_file()]
