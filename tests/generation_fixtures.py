"""Helpers for the generation, bundle and CLI tests: tiny models and checkpoints (seeded)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from s2s.checkpoint import MODEL_PREFIX, metadata
from s2s.config import ModelConfig
from s2s.model.transformer import Seq2SeqTransformer
from s2s.tokenizer import Tokenizer


def tiny_model(vocab_size: int, seed: int = 0, **overrides) -> Seq2SeqTransformer:
    """A 2+2-layer, d_model 32 model in eval mode, dropout off; any field can be overridden."""
    base = ModelConfig(
        vocab_size=vocab_size,
        d_model=32,
        d_ff=48,
        n_heads=4,
        n_encoder_layers=2,
        n_decoder_layers=2,
        dropout=0.0,
        max_positions=64,
    )
    config = dataclasses.replace(base, **overrides)
    torch.manual_seed(seed)
    return Seq2SeqTransformer(config).eval()


def write_ckpt(path: Path, model: Seq2SeqTransformer, tokenizer: Tokenizer, **extra) -> Path:
    """An s2s `.ckpt` as the trainer writes it (plus any `extra` top-level entries)."""
    state = {MODEL_PREFIX + k: v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "s2s": metadata(model.config, tokenizer), **extra}, path)
    return path
