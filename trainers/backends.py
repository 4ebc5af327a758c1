"""ONNX Runtime backends of a model folder: export, encode, and a quality gate per dim.

    python -m trainers.backends runs/local/best                       # writes runs/local/best/onnx/
    python -m trainers.backends my-model --gate-data pairs.jsonl      # and gates the backends

The export writes sentence-transformers' own layout: ``onnx/model.onnx`` (fp32: the
transformer, ``last_hidden_state`` out, dynamic batch and sequence axes, opset 17, torch's
TorchScript exporter) and ``onnx/model_qint8.onnx`` (dynamic int8 quantisation, weights per
channel: per-tensor int8 lost too much, cosine 0.83 to fp32 on some texts). What comes after
the transformer is read from the folder's own modules and recorded in ``onnx/pipeline.json``:
the max sequence length, the pooling, any Dense layer (its weights as ``onnx/dense_<i>.npz``)
and the normalisation, so ``OnnxEncoder`` needs neither torch nor sentence-transformers.

Before anything is written, the fp32 export is checked against ``SentenceTransformer.encode``
on sample texts; a failure leaves no ``onnx/`` folder behind (it is built aside, then moved).

int8 is only worth serving where retrieval quality survives, which is measured per
Matryoshka dim, not assumed: ``gate`` scores every backend with trainers' evaluator and
records each one's MAP@100 and NDCG@10 at every dim, and whether it is within ``tolerance``
MAP@100 of torch fp32 at every dim, in the folder's matryoshka.json (``backends``). A gate
needs ``MIN_GATE_QUERIES`` queries to decide: on fewer, one query's rank moves MAP@100 by more
than the tolerance, so a backend passes or fails by chance, and it is recorded as not gated.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from trainers.errors import ModelError
from trainers.models import matryoshka_info, write_matryoshka_info

logger = logging.getLogger(__name__)
# Texts per ONNX Runtime call. A call pads every text to the longest in it, and texts are
# sorted by length before they are cut into calls, so small calls compute little padding. Per
# call overhead is small, so 8 was fastest (MiniLM, 2-core AVX2, texts/s): one thread, 32
# texts in calls of 4/8/16/32: 217.7/217.3/205.5/184.7; two threads, 64 texts in calls of
# 8/16/32/64: 388.1/390.7/368.7/348.8, and 16 texts in calls of 8/16: 373.7/356.4.
ENCODE_CHUNK = 8

ONNX_DIR = "onnx"
FILES = {"onnx": "model.onnx", "onnx-int8": "model_qint8.onnx"}
BACKENDS = ("torch", "onnx", "onnx-int8")
DEFAULT_TOLERANCE = 0.005  # MAP@100 a backend may lose against torch fp32 at any dim
# Below this, one query is 1/n of MAP@100: at 63 queries (a smoke sweep's validation) a single
# query whose relevant passage falls from rank 1 to 2 moves it by 0.008, more than the
# tolerance, so the verdict would be luck. (The default sweep gates on 300 validation queries.)
MIN_GATE_QUERIES = 200
OPSET = 17
CHECK_TEXTS = [
    "a terminal text editor",
    "Python bindings for the Qt toolkit",
    "GNU C compiler",
    "a library for reading and writing compressed archives in many formats, with tools",
    "x",
]
ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": lambda x: x,
    "torch.nn.modules.activation.Tanh": np.tanh,
    "torch.nn.modules.activation.ReLU": lambda x: np.maximum(x, 0),
}


def export(folder: str | Path, check_atol: float = 1e-4) -> dict[str, Any]:
    """Write ``folder``/onnx/ (fp32 and int8) after checking fp32 against ``encode``."""
    folder = Path(folder)
    if not (folder / "modules.json").is_file():
        raise ModelError(f"{folder}: not a sentence-transformers model folder (no modules.json)")
    model = _load(folder)
    destination = folder / ONNX_DIR
    try:
        staging = Path(tempfile.mkdtemp(prefix=".onnx-", dir=folder))
    except OSError as err:
        raise ModelError(f"{folder}: cannot write the ONNX export there: {err}") from None
    try:
        pipeline = _export_transformer(model, staging)
        _export_pipeline(model, staging, pipeline)
        _quantize(staging)
        diff = _check(model, staging, check_atol)
        shutil.rmtree(destination, ignore_errors=True)
        staging.rename(destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info(
        "ONNX export of %s: fp32 and int8 in %s (fp32 vs encode: %.1e)", folder, destination, diff
    )
    return {"folder": str(destination), "max_abs_diff_fp32": diff}


def _load(folder: Path):
    from trainers.models import load_model

    try:
        return load_model(str(folder), device="cpu").eval()
    except Exception as err:  # any load failure means "not a usable model"
        raise ModelError(f"{folder}: not a loadable sentence-transformers model: {err}") from None


def _export_transformer(model, staging: Path) -> dict[str, Any]:
    import torch

    transformer = model[0]
    if type(transformer).__name__ != "Transformer":
        raise ModelError(f"the first module is {type(transformer).__name__}, not a Transformer")
    tokenizer = transformer.tokenizer
    sample = tokenizer(["an example text", "x"], padding=True, return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]

    class LastHiddenState(torch.nn.Module):
        def __init__(self, auto_model):
            super().__init__()
            self.auto_model = auto_model

        def forward(self, *inputs):
            return self.auto_model(**dict(zip(names, inputs, strict=True))).last_hidden_state

    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["last_hidden_state"] = {0: "batch", 1: "sequence"}
    # The tracer warns about Python conditions it freezes (padding and causal-mask checks that
    # do not depend on the input's size here); the check against encode is what tells.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            LastHiddenState(transformer.auto_model).eval(),
            tuple(sample[n] for n in names),
            str(staging / FILES["onnx"]),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,  # the TorchScript exporter: dynamic axes as given, one .onnx file
        )
    return {"inputs": names, "max_seq_length": int(model.max_seq_length)}


def _export_pipeline(model, staging: Path, pipeline: dict[str, Any]) -> None:
    """Record what follows the transformer, from the model's own modules."""
    steps: list[dict[str, Any]] = []
    for i, module in enumerate(list(model)[1:], start=1):
        kind = type(module).__name__
        if kind == "Pooling":
            mode = module.get_config_dict().get("pooling_mode", "mean")
            if mode not in ("mean", "cls", "max"):
                raise ModelError(
                    f"pooling mode {mode!r} has no ONNX pipeline here (mean, cls, max)"
                )
            steps.append({"type": "pooling", "mode": mode})
        elif kind == "Dense":
            activation = module.get_config_dict().get("activation_function", "")
            if activation not in ACTIVATIONS:
                raise ModelError(f"Dense activation {activation!r} has no ONNX pipeline here")
            weights = module.linear.weight.detach().cpu().numpy()
            bias = module.linear.bias
            np.savez(
                staging / f"dense_{i}.npz",
                weight=weights,
                bias=bias.detach().cpu().numpy()
                if bias is not None
                else np.zeros(weights.shape[0]),
            )
            steps.append({"type": "dense", "file": f"dense_{i}.npz", "activation": activation})
        elif kind == "Normalize":
            steps.append({"type": "normalize"})
        else:
            raise ModelError(f"module {kind} has no ONNX pipeline here")
    pipeline.update(
        steps=steps, prompts=dict(model.prompts), dim=int(model.get_embedding_dimension())
    )
    (staging / "pipeline.json").write_text(json.dumps(pipeline, indent=2))


def _quantize(staging: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(staging / FILES["onnx"]),
        str(staging / FILES["onnx-int8"]),
        per_channel=True,
        weight_type=QuantType.QInt8,
    )


def _check(model, staging: Path, atol: float) -> float:
    expected = model.encode(CHECK_TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    got = OnnxEncoder(staging.parent, "onnx", folder=staging).encode(CHECK_TEXTS)
    diff = float(np.abs(got - expected).max())
    if not diff <= atol:
        raise ModelError(
            f"the ONNX export differs from encode by {diff:.2e} (> {atol}): not written"
        )
    return diff


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
                f"{model_folder}: no {backend} export: run python -m trainers.backends "
                f"{model_folder}"
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
            # Spinning (ONNX Runtime's default) made two threads alone on a 2-core machine
            # faster (MiniLM texts/s, batch 1/16/64: 252/368/390 -> 290/386/402), but a
            # replica shares its cores with its HTTP work and other processes, from which a
            # spinning thread takes CPU; one thread has no pool to spin anyway.
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

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        return self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_seq_length,
            return_tensors="np",
        )

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
        # Longest first, as SentenceTransformer.encode does: a batch is padded to its longest
        # text, so batches of like lengths pad (and compute) little.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        counts = np.empty(len(texts), dtype=np.int64)
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            out[rows], counts[rows] = self._encode_batch([texts[i] for i in rows])
        return out, counts.tolist()

    def _encode_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        tokens = self.tokenize(texts)
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
        counts = tokens["attention_mask"].sum(axis=1)
        return (x / np.maximum(norms, 1e-12)).astype(np.float32), counts


def available(folder: str | Path) -> list[str]:
    """The backends a folder can serve: torch always, the ONNX ones it holds."""
    onnx = Path(folder) / ONNX_DIR
    return ["torch"] + [b for b, f in FILES.items() if (onnx / f).is_file()]


def gate(
    folder: str | Path,
    task,
    config,
    tolerance: float = DEFAULT_TOLERANCE,
    torch_metrics: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Score every backend of ``folder`` on ``task`` at every dim (trainers' evaluator), and
    record in its matryoshka.json which are servable: within ``tolerance`` MAP@100 of torch
    fp32 at every dim. ``torch_metrics``: torch's, if already measured on ``task``. Returns
    the ``backends`` record."""
    from trainers.evaluate import evaluate, evaluator
    from trainers.models import load_model

    folder = Path(folder)
    model = load_model(str(folder), device="cpu")
    scorer = evaluator(task, config)
    results = {"torch": torch_metrics or evaluate(model, task, config)}
    for backend in available(folder)[1:]:
        encoder = OnnxEncoder(folder, backend)
        prompt = encoder.prompts.get("query", "")
        queries = encoder.encode(
            [prompt + q for q in task.queries.values()], config.eval_batch_size
        )
        corpus = encoder.encode(list(task.corpus.values()), config.eval_batch_size)
        results[backend] = scorer.score_embeddings(model, queries, corpus)
    decided = len(task.queries) >= MIN_GATE_QUERIES
    record: dict[str, Any] = {"task": task.describe(), "tolerance": tolerance, "metric": "map@100"}
    if not decided:
        record["undecided"] = f"{len(task.queries)} queries, under the {MIN_GATE_QUERIES} needed"
    for backend, metrics in results.items():
        drops = {
            d: results["torch"][f"dim_{d}_cosine_map@100"] - metrics[f"dim_{d}_cosine_map@100"]
            for d in config.matryoshka_dims
        }
        record[backend] = {
            "gated": backend == "torch"
            or (decided and all(drop <= tolerance for drop in drops.values())),
            "largest_drop": max(drops.values()),
            **{
                f"dim_{d}_{m}": metrics[f"dim_{d}_cosine_{m}"]
                for d in config.matryoshka_dims
                for m in ("map@100", "ndcg@10")
            },
        }
    write_matryoshka_info(
        folder, matryoshka_info(folder).get("dims", config.matryoshka_dims), backends=record
    )
    return record


def gate_table(record: dict[str, Any], dims: list[int]) -> list[str]:
    """The backend x dim table of a gate record, in Markdown (model card, report)."""
    backends = [b for b in BACKENDS if b in record]
    lines = [
        "| backend | "
        + " | ".join(f"MAP@100 @{d}" for d in dims)
        + " | "
        + " | ".join(f"NDCG@10 @{d}" for d in dims)
        + " | largest MAP@100 drop | servable |",
        "|---|" + "---:|" * (2 * len(dims) + 1) + "---|",
    ]
    for b in backends:
        r = record[b]
        cells = [f"{r[f'dim_{d}_map@100']:.4f}" for d in dims]
        cells += [f"{r[f'dim_{d}_ndcg@10']:.4f}" for d in dims]
        if r["gated"]:
            verdict = "yes"
        elif "undecided" in record:
            verdict = f"no (needs --allow-ungated: {record['undecided']})"
        else:
            verdict = f"no (needs --allow-ungated: over {record['tolerance']})"
        lines.append(f"| {b} | " + " | ".join(cells) + f" | {r['largest_drop']:+.4f} | {verdict} |")
    return lines


def _main(argv: list[str]) -> int:
    from trainers import cli

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", help="a sentence-transformers model folder")
    parser.add_argument(
        "--gate-data", help="pairs (debian, a .jsonl/.csv/.parquet file, a hub id) to gate on"
    )
    parser.add_argument("--gate-pairs", type=int, default=2000, help="pairs drawn for the gate")
    parser.add_argument(
        "--tolerance", type=float, default=DEFAULT_TOLERANCE, help="MAP@100 a backend may lose"
    )
    args = parser.parse_args(argv)
    cli.setup_logging()
    result = export(args.folder)
    print(f"written: {result['folder']} (fp32 vs encode: {result['max_abs_diff_fp32']:.1e})")
    if args.gate_data:
        from trainers.config import TrainConfig
        from trainers.evaluate import pairs_task

        dims = matryoshka_info(args.folder).get("dims") or [
            _load(Path(args.folder)).get_embedding_dimension()
        ]
        config = TrainConfig(matryoshka_dims=tuple(dims), data=args.gate_data)
        task = pairs_task(config, args.gate_pairs, None, config.seed)
        print("\n".join(gate_table(gate(args.folder, task, config, args.tolerance), list(dims))))
    return 0


def main(argv: list[str] | None = None) -> int:
    from trainers import cli

    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
