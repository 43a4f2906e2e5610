"""Helpers for the generation, bundle and CLI tests: tiny models and checkpoints (seeded)."""

from __future__ import annotations

from pathlib import Path

import torch

from helpers import model as model_fixtures
from s2s.checkpoint import MODEL_PREFIX, metadata
from s2s.model.transformer import Seq2SeqTransformer
from s2s.tokenizer import Tokenizer


def tiny_model(vocab_size: int, seed: int = 0, **overrides) -> Seq2SeqTransformer:
    """`model_fixtures.tiny_model` (2+2 layers, d_model 32, dropout off, eval mode) for a
    tokenizer's vocabulary; any field can be overridden."""
    return model_fixtures.tiny_model(seed, vocab_size=vocab_size, **overrides)


def write_ckpt(
    path: Path, model: Seq2SeqTransformer, tokenizer: Tokenizer, framing=None, **extra
) -> Path:
    """An s2s `.ckpt` as the trainer writes it (plus any `extra` top-level entries)."""
    state = {MODEL_PREFIX + k: v for k, v in model.state_dict().items()}
    meta = metadata(model.config, tokenizer, framing)
    torch.save({"state_dict": state, "s2s": meta, **extra}, path)
    return path
