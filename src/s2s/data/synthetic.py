"""Copy warm-up: the first optimiser steps of pre-training copy rows of random tokens.

Why. A denoiser must learn to copy its input before infilling is worth anything, and on real
text it learns that slowly: the decoder first becomes a language model of the target, which
already lowers the loss, and cross-attention stays unused for hundreds of steps (measured on
the default run: 0% of held-out masked lines copied after 300 steps). On rows of uniformly
random tokens a language model is worthless, so the only way down is to read the source:
the tiny preset learns to copy such rows from its 8,192-token vocabulary in ~150 steps of
12-token rows (seconds), and the copying then carries over to real text (see README,
"Pre-training recipe"). Pre-training on synthetic or even nonsense data recovering much of
real pre-training's benefit: Krishna et al. 2021 ("Does pretraining for summarization require
knowledge transfer?"), Wu et al. 2022 ("Insights into pre-training via simpler synthetic
tasks").

Rows are drawn from a generator keyed by (seed, step, micro-batch, rank): the same on every
run and after a resume, different on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from s2s.tokenizer import Tokenizer


@dataclass(frozen=True)
class CopyWarmup:
    """`copy_warmup.*` in conf/train.yaml: `steps` optimiser steps (0 = off) of `length`-token
    random rows whose target is the row itself (plus EOS)."""

    steps: int = 0
    length: int = 12

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"copy_warmup.steps={self.steps} must be >= 0")
        if self.length < 1:
            raise ValueError(f"copy_warmup.length={self.length} must be >= 1")


def copyable_ids(tokenizer: Tokenizer) -> Tensor:
    """Ids a random row may hold: every id that is not a special token (pad, eos, mask, ...)."""
    special = torch.zeros(tokenizer.vocab_size, dtype=torch.bool)
    special[tokenizer.special_ids] = True
    return torch.nonzero(~special).flatten()


def random_copy_batch(
    rows: int, length: int, ids: Tensor, eos_id: int, generator: torch.Generator
) -> dict[str, Tensor]:
    """A batch in the data module's layout: input_ids = labels = random ids + EOS.

    Returns input_ids (rows, length + 1), attention_mask (all ones) and labels (same as input).
    """
    picks = torch.randint(len(ids), (rows, length), generator=generator)
    eos = torch.full((rows, 1), eos_id, dtype=torch.long)
    tokens = torch.cat([ids[picks], eos], dim=1)  # (rows, length + 1)
    return {
        "input_ids": tokens,
        "attention_mask": torch.ones_like(tokens),
        "labels": tokens.clone(),
    }


def warmup_generator(seed: int, step: int, micro_batch: int, rank: int) -> torch.Generator:
    """A generator for one micro-batch, from integers only (no global RNG state)."""
    key = ((seed * 1_000_003 + step) * 1_009 + micro_batch) * 65_537 + rank
    return torch.Generator().manual_seed(key % (2**63 - 1))
