"""Trial throughput: training pairs/s of the default training config on this machine.

    python benchmarks/throughput.py              # MiniLM, trainers/configs/default.yaml (~10 min)
    python benchmarks/throughput.py --pairs 4000 # more steps, steadier figure
    python benchmarks/throughput.py --smoke      # tiny random model, seconds (CI runs this)

It runs trainers.train with trainers/configs/default.yaml (batch 32, 128 tokens, MatryoshkaLoss
over MNRL at 4 dims, precision auto: fp32 on a CPU; on a CUDA GPU fp32 + TF32, bf16 above 150M
parameters, and fused AdamW) for one epoch of --pairs pairs, and reads the trainer's own timing
of its training epochs (``train_seconds``: data loading, forward, backward and optimizer steps;
no evaluation, no saving). Side by side in the same run: the same pairs encoded by the model
(no gradients), and, on a CPU, training with a single torch thread, which is what each trial of
the default sweep gets (cpus_per_trial: 1).

On a CUDA machine it writes results/throughput-gpu.md instead, trains 20,000 pairs by default,
and adds side by side: fp32 (with TF32), fp16, batch 128 in bf16 and in fp32, and no DataLoader
workers (tokenising between steps, as on a CPU), each with its peak GPU memory; it also records
the trainer flags the run got (bf16, tf32, optim, workers) and TF32's state in torch afterwards.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _common import add_common_args, device_name, markdown_table, results_dir, write_results

from trainers import cli


def train_rate(config) -> tuple[float, object]:
    """Training pairs/s of one epoch, from the trainer's own step timing."""
    import torch

    from trainers.train import train

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    # baseline={} skips the baseline evaluation; the per-epoch one runs on a tiny held-out set.
    result = train(config, baseline={})
    return result.train_pairs * config.epochs / result.train_seconds, result


def tf32_state() -> str:
    """TF32 for matmuls as torch sees it now. torch >= 2.9 has a new API (fp32_precision) and
    refuses to read the legacy flag once the new one was set, as the HF trainer does."""
    import torch

    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        return f"fp32_precision={matmul.fp32_precision!r}"
    return f"allow_tf32={matmul.allow_tf32}"


def peak_gib() -> str:
    import torch

    return f"{torch.cuda.max_memory_allocated() / 2**30:.2f}" if torch.cuda.is_available() else "-"


def encode_rate(config) -> float:
    """Pairs/s of encoding the same training pairs (query and passage) without gradients."""
    from trainers.data import load_split
    from trainers.models import load_model

    model = load_model(config.model, config.max_seq_length)
    split = load_split(config)
    texts = [t for p in split.train for t in (p.query, p.passage)]
    model.encode(texts[: config.batch_size], batch_size=config.batch_size)  # warm-up
    started = time.perf_counter()
    model.encode(texts, batch_size=config.batch_size)
    return len(split.train) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", default=None, help="trainers YAML (default: trainers/configs/default.yaml)"
    )
    parser.add_argument(
        "--pairs",
        type=int,
        default=None,
        help="training pairs, one epoch (default: 960 on a CPU, 20000 on a GPU)",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="model to train instead of the config's (a local folder, e.g. a bundled:minilm copy)",
    )
    parser.add_argument("--no-single-thread", action="store_true", help="skip the 1-thread CPU run")
    add_common_args(parser)
    args = parser.parse_args(argv)

    import torch

    from trainers import config as config_lib
    from trainers.train import DEFAULT_CONFIG, dataloader_workers, precision_args

    cuda = torch.cuda.is_available()
    tmp = tempfile.TemporaryDirectory()
    overrides = {
        "max_pairs": args.pairs or (20000 if cuda else 960),
        "epochs": 1,
        "load_best_model_at_end": False,
        # A tiny held-out set: the trainer evaluates after the epoch, outside the timed part.
        "eval_size": 64,
        "eval_max_queries": 32,
        "output_dir": str(Path(tmp.name) / "model"),
    }
    if args.smoke:
        overrides.update(model="bundled:tiny", max_pairs=64, max_seq_length=32)
    elif args.model:
        overrides["model"] = args.model
    config = config_lib.load(args.config or DEFAULT_CONFIG, overrides)
    flags = precision_args(config.precision)
    precision = "bf16" if flags["bf16"] else "fp16" if flags["fp16"] else "fp32"
    device = device_name()
    threads = torch.get_num_threads()

    rows = []
    if cuda:
        # The first run in a process pays CUDA's and cuBLAS's start-up and kernel selection: a
        # short untimed run first, so the rows compare like with like (seen: 1.6x off without).
        train_rate(config.replace(max_pairs=640, output_dir=str(Path(tmp.name) / "warm-up")))
    rate, result = train_rate(config)
    workers = dataloader_workers(config.dataloader_workers)
    rows.append(
        ("training", device, precision, config.batch_size, f"{rate:.2f}", "1.00x", peak_gib())
    )
    tf32_after = tf32_state() if cuda else None
    if cuda:
        # Side by side on the GPU: what bf16 buys over fp32 (TF32 stays on, as the trainer sets
        # it on any Ampere+ GPU), fp16, and a batch that fills an H100 better than 32.
        for label, change in (
            ("fp32 + TF32", {"precision": "fp32"}),
            ("fp16", {"precision": "fp16"}),
            ("batch 128", {"batch_size": 128}),
            ("fp32 + TF32, batch 128", {"precision": "fp32", "batch_size": 128}),
            ("no dataloader workers", {"dataloader_workers": 0}),
        ):
            variant = config.replace(
                output_dir=str(Path(tmp.name) / f"model-{len(rows)}"), **change
            )
            other, _ = train_rate(variant)
            name = "bf16" if variant.precision == "auto" and flags["bf16"] else variant.precision
            rows.append(
                (
                    f"training, {label}",
                    device,
                    name,
                    variant.batch_size,
                    f"{other:.2f}",
                    f"{other / rate:.2f}x",
                    peak_gib(),
                )
            )
    encode = encode_rate(config)
    rows.append(
        (
            "encode only (no gradients)",
            device,
            "fp32",
            config.batch_size,
            f"{encode:.2f}",
            f"{encode / rate:.2f}x",
            "-",
        )
    )
    single = None
    if not torch.cuda.is_available() and not args.no_single_thread and threads > 1:
        torch.set_num_threads(1)
        single, _ = train_rate(config.replace(output_dir=str(Path(tmp.name) / "model-1")))
        torch.set_num_threads(threads)
        rows.append(
            (
                "training, 1 torch thread (one sweep trial's share)",
                f"CPU: 1 of {threads} threads",
                precision,
                config.batch_size,
                f"{single:.2f}",
                f"{single / rate:.2f}x",
                "-",
            )
        )

    body = (
        f"{'tiny random model (smoke)' if args.smoke else config.model}, "
        f"{'the smoke config' if args.smoke else 'trainers/configs/default.yaml'}: "
        f"{result.train_pairs} pairs, "
        f"1 epoch, batch {config.batch_size}, {config.max_seq_length} tokens, dims "
        f"{list(config.matryoshka_dims)}, "
        f"loss MatryoshkaLoss({config.loss}); device **{device}**"
        f"{'' if cuda else ' (no GPU was available for this run: CPU only)'}.\n\n"
        + markdown_table(
            ("what", "device", "precision", "batch", "pairs/s", "vs training", "peak GPU GiB"),
            rows,
            "lllrrrr",
        )
        + f"\nTraining: **{rate:.2f} pairs/s** ({result.train_seconds:.1f} s for "
        f"{result.train_pairs} pairs, "
        "timed by the trainer around its training epochs: data loading and steps, no evaluation).\n"
        f"Encoding the same pairs (query + passage, no gradients) runs {encode / rate:.1f}x faster "
        "than training them.\n"
    )
    if cuda:
        body += (
            f"Trainer flags of the default run: bf16={flags['bf16']}, tf32={flags.get('tf32')}, "
            f"optim={flags.get('optim')}, dataloader workers={workers}; TF32 for matmuls in torch "
            f"after training: {tf32_after}.\n"
        )
    if single is not None:
        body += (
            f"With one thread training runs at {single / rate:.2f}x the {threads}-thread rate, so "
            "two 1-CPU trials "
            f"side by side (the default sweep) train up to {2 * single / rate:.2f}x as many pairs "
            "per second "
            "as one trial with all cores, if they do not slow each other down.\n"
        )
    write_results(
        results_dir(args, tmp.name),
        "throughput-gpu" if cuda else "throughput",
        "Trial throughput: training pairs/s",
        body,
        data=result.data,
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))  # Ctrl-C and SIGTERM stop it, also under nohup
