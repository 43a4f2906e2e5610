"""Helpers shared by the model tests: tiny configs and padded batches (all seeded)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from s2s import ModelConfig
from s2s.model import Seq2SeqTransformer

POSITIONS = ("learned", "sinusoidal", "t5_relative", "rotary", "none")
VOCAB = 97


def tiny_config(**overrides) -> ModelConfig:
    """A very small config (2+2 layers, d_model 32) with dropout off."""
    base = ModelConfig(
        vocab_size=VOCAB,
        d_model=32,
        d_ff=48,
        n_heads=4,
        n_encoder_layers=2,
        n_decoder_layers=2,
        dropout=0.0,
        max_positions=64,
        relative_num_buckets=8,
        relative_max_distance=16,
    )
    return dataclasses.replace(base, **overrides)


def tiny_model(seed: int = 0, **overrides) -> Seq2SeqTransformer:
    torch.manual_seed(seed)  # the trainer seeds init the same way
    return Seq2SeqTransformer(tiny_config(**overrides)).eval()


@dataclass
class Batch:
    input_ids: Tensor  # (B, S)
    attention_mask: Tensor  # (B, S), 1 = real token, right padding
    decoder_input_ids: Tensor  # (B, T)
    decoder_attention_mask: Tensor  # (B, T)


def padded_batch(
    vocab: int = VOCAB, *, src_lengths=(9, 5, 2), tgt_lengths=(7, 4, 7), seed: int = 0, pad: int = 0
) -> Batch:
    """Random ids in [2, vocab) with right padding to the longest length in each side."""
    gen = torch.Generator().manual_seed(seed)

    def side(lengths):
        ids = torch.randint(2, vocab, (len(lengths), max(lengths)), generator=gen)
        mask = torch.zeros_like(ids)
        for row, length in enumerate(lengths):
            mask[row, :length] = 1
        return ids.masked_fill(mask == 0, pad), mask

    src, src_mask = side(src_lengths)
    tgt, tgt_mask = side(tgt_lengths)
    return Batch(src, src_mask, tgt, tgt_mask)
