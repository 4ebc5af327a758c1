"""The ONNX export of a model folder, checked against sentence-transformers before it is kept.

    python -m trainers.export runs/local/best                       # writes runs/local/best/onnx/
    python -m trainers.export my-model --gate-data pairs.jsonl      # and gates the backends

The export writes sentence-transformers' own layout: ``onnx/model.onnx`` (fp32: the
transformer, ``last_hidden_state`` out, dynamic batch and sequence axes, opset 17, torch's
TorchScript exporter) and ``onnx/model_qint8.onnx`` (dynamic int8 quantisation, weights per
channel: per-tensor int8 lost too much, cosine 0.83 to fp32 on some texts). What comes after
the transformer is read from the folder's own modules and recorded in ``onnx/pipeline.json``:
the max sequence length, the pooling, any Dense layer (its weights as ``onnx/dense_<i>.npz``)
and the normalisation, so ``trainers.encoders.OnnxEncoder`` needs neither torch nor
sentence-transformers.

Before anything is written, the fp32 export is checked against ``SentenceTransformer.encode``
on sample texts; a failure leaves no ``onnx/`` folder behind (it is built aside, then moved).
With ``--gate-data`` the int8 output is calibrated on its passages that the gate does not score,
and the backends and output precisions are gated (trainers/gate.py, trainers/precision.py).
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

from trainers import precision
from trainers.encoders import ACTIVATIONS, FILES, ONNX_DIR, OnnxEncoder
from trainers.errors import ModelError
from trainers.gate import DEFAULT_TOLERANCE, gate, gate_table
from trainers.models import matryoshka_info

logger = logging.getLogger(__name__)
OPSET = 17
CHECK_TEXTS = [
    "a terminal text editor",
    "Python bindings for the Qt toolkit",
    "GNU C compiler",
    "a library for reading and writing compressed archives in many formats, with tools",
    "x",
]


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
    parser.add_argument(
        "--precision-tolerance",
        type=float,
        default=precision.DEFAULT_TOLERANCE,
        help="MAP@100 an output precision (int8, binary...) may lose at a dim (default: "
        "%(default)s)",
    )
    parser.add_argument(
        "--recommend-within",
        type=float,
        default=precision.DEFAULT_RECOMMEND_WITHIN,
        help="MAP@100 the recommended dim may lose against full-dim float32 (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    cli.setup_logging()
    result = export(args.folder)
    print(f"written: {result['folder']} (fp32 vs encode: {result['max_abs_diff_fp32']:.1e})")
    if args.gate_data:
        from trainers.config import TrainConfig
        from trainers.data import ir_task, load_pairs, sample
        from trainers.tasks import Task

        folder = Path(args.folder)
        dims = matryoshka_info(folder).get("dims") or [_load(folder).get_embedding_dimension()]
        config = TrainConfig(matryoshka_dims=tuple(dims), data=args.gate_data)
        pairs, _ = load_pairs(config)
        scored = sample(pairs, args.gate_pairs, config.seed)
        task = Task(args.gate_data, *ir_task(scored, None, config.seed))
        precision.calibrate_apart(folder, pairs, task)
        record = gate(
            folder,
            task,
            config,
            args.tolerance,
            precision_tolerance=args.precision_tolerance,
            recommend_within=args.recommend_within,
        )
        print("\n".join(gate_table(record, list(dims))))
        precisions = matryoshka_info(folder)["precisions"]
        backend = precision.cpu_backend(precisions)
        print(f"\noutput precisions through {backend} (MAP@100; (no): not served there):")
        print("\n".join(precision.precision_table(precisions, backend)))
        recommended = precisions["backends"][backend]["recommended"]
        print(f"recommended: {precision.describe_recommended(recommended)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from trainers import cli

    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
