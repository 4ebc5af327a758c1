"""A tiny randomly initialised sentence-transformers model, for tests and smoke modes.

2 BERT layers of hidden size 32 with the bundled MiniLM's vocabulary and tokenizer, mean
pooling, a Dense 32->384 head and Normalize: a real model with MiniLM's output dimension
that trains and encodes in milliseconds on a CPU. It is built locally; nothing is downloaded.
"""

from __future__ import annotations

import shutil
from pathlib import Path

TINY_DIM = 384  # the tiny model's output dim matches MiniLM's, so the same dims apply


def build_tiny_model(path: Path, vocabulary: Path) -> Path:
    """Build the tiny model under ``path`` and return its folder (``path/tiny-model``).

    ``vocabulary`` is a BERT model folder whose vocabulary and tokenizer files are copied: the
    bundled MiniLM's (``trainers.models.bundled_path("minilm")``).
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    source = vocabulary
    bert_dir = path / "bert"
    bert_dir.mkdir(parents=True)
    vocab_size = sum(1 for _ in open(source / "vocab.txt", encoding="utf-8"))
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(bert_dir)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(source / name, bert_dir / name)
    modules = [
        Transformer(str(bert_dir), max_seq_length=64),
        Pooling(32, "mean"),
        Dense(32, TINY_DIM, activation_function=torch.nn.Tanh()),
        Normalize(),
    ]
    model = SentenceTransformer(modules=modules, device="cpu")
    out = path / "tiny-model"
    model.save(str(out))
    return out
