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

Plain copying is learned first and fast, but it is copying by position (target position t
reads source position t), which breaks at the first mask of a noised row. So a share of the
rows (`noised`) goes through the run's own objective (BART infilling, T5 spans): to copy past a
mask the model has to find its place in the source by content, which random tokens (all
distinct, nothing to guess) teach quickly. Measured on the default run: plain-copy warm-up
alone gave 100% copied held-out lines before any real text, but only 5-11% after 150-300 real
steps (the outputs derail after the mask); see README, "Pre-training recipe".

Rows are drawn from a generator keyed by (seed, step, micro-batch, rank): the same on every
run and after a resume, different on every rank.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from s2s.data.examples import Example, collate
from s2s.data.noising import NoisedExample
from s2s.tokenizer import Tokenizer

Noise = Callable[[np.ndarray, np.random.Generator], NoisedExample]


@dataclass(frozen=True)
class CopyWarmup:
    """`copy_warmup.*` in conf/train.yaml: `steps` optimiser steps (0 = off) of `length`-token
    random rows whose target is the row itself (plus EOS); from step `noise_from` on, a share
    `noised` of the rows gets the run's noise on its input (noise from the first step keeps
    the plain copy from forming: 0% copied after 300 steps of half-noised rows)."""

    steps: int = 0
    length: int = 12
    noised: float = 0.5
    noise_from: int = 0  # warm-up steps before any row is noised
    vocab: int | None = None  # draw from the first `vocab` copyable ids only (None = all)
    # end early, once the model copies this share of the warm-up tokens (mean of the last
    # `window` steps; None = always `steps`)
    until: float | None = None
    window: int = 10

    def __post_init__(self) -> None:
        if self.noise_from < 0:
            raise ValueError(f"copy_warmup.noise_from={self.noise_from} must be >= 0")
        if not 0 <= self.noised <= 1:
            raise ValueError(f"copy_warmup.noised={self.noised} must be in [0, 1]")
        if self.steps < 0:
            raise ValueError(f"copy_warmup.steps={self.steps} must be >= 0")
        if self.length < 1:
            raise ValueError(f"copy_warmup.length={self.length} must be >= 1")
        if self.until is not None and not 0 < self.until <= 1:
            raise ValueError(f"copy_warmup.until={self.until} must be in (0, 1] (or null)")
        if self.window < 1:
            raise ValueError(f"copy_warmup.window={self.window} must be >= 1")
        if self.vocab is not None and self.vocab < 2:
            raise ValueError(f"copy_warmup.vocab={self.vocab} must be >= 2 (or null: all ids)")


def copyable_ids(tokenizer: Tokenizer, limit: int | None = None) -> np.ndarray:
    """Ids a random row may hold: every id that is not a special token (pad, eos, mask, ...);
    with `limit`, only the first `limit` of them (in a byte-level BPE the low ids are the bytes
    and the earliest, most frequent merges)."""
    special = np.zeros(tokenizer.vocab_size, dtype=bool)
    special[tokenizer.special_ids] = True
    return np.flatnonzero(~special)[:limit]


def random_copy_batch(
    rows: int,
    warmup: CopyWarmup,
    ids: np.ndarray,
    *,
    eos_id: int,
    pad_id: int,
    rng: np.random.Generator,
    noise: Noise | None = None,
) -> dict[str, Tensor]:
    """A batch in the data module's layout (s2s.data.examples.collate) of random rows.

    Each row holds `warmup.length` ids drawn uniformly from `ids`; its target is the row plus
    EOS. With probability `warmup.noised` (given a `noise` objective; the caller passes none
    before `warmup.noise_from`) the input is the noised row, else the row itself plus EOS.
    """
    examples = []
    for _ in range(rows):
        row = ids[rng.integers(len(ids), size=warmup.length)]
        if noise is not None and rng.random() < warmup.noised:
            noised = noise(row, rng)
            examples.append(Example(noised.input_ids, noised.target_ids))
        else:
            full = np.append(row, eos_id).astype(np.int64)
            examples.append(Example(full, full.copy()))
    return collate(examples, pad_id)


def warmup_rng(seed: int, step: int, micro_batch: int, rank: int) -> np.random.Generator:
    """The generator of one micro-batch, from integers only (no global RNG state)."""
    return np.random.default_rng([seed, step, micro_batch, rank])
