"""The pre-training objectives as callables `(ids, rng) -> NoisedExample` for `TextDataset`.

Each binds the pure noising functions to a tokenizer's special ids and the `data.noise.*`
settings, and says how many raw tokens one row may hold (`block_length`) so that the noised
input fits `max_source_length` and the target fits `max_target_length`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from s2s.data.config import DataConfig
from s2s.data.infilling import bart_text_infilling
from s2s.data.mixture import mixture_block_length
from s2s.data.noising import NoisedExample, t5_span_corruption
from s2s.data.ul2 import MixtureObjective, build_mixture
from s2s.tokenizer import Tokenizer


@dataclass(frozen=True)
class BartObjective:
    """BART text infilling (Lewis et al. 2020, Sec. 2.2); the target is the whole text."""

    mask_id: int
    eos_id: int
    mask_ratio: float
    poisson_lambda: float
    random_ratio: float
    word_start_table: np.ndarray | None  # (V,) bool, for whole-word masking
    line_break_table: np.ndarray | None  # (V,) bool: line breaks are never masked
    per_line: bool  # with line_break_table: each line noised on its own (else spans are cut)
    sentence_end_table: np.ndarray | None  # (V,) bool, for sentence permutation
    random_ids: np.ndarray | None  # ids a span may be replaced by when random_ratio > 0

    def __call__(self, ids: np.ndarray, rng: np.random.Generator) -> NoisedExample:
        return bart_text_infilling(
            ids,
            mask_id=self.mask_id,
            eos_id=self.eos_id,
            rng=rng,
            mask_ratio=self.mask_ratio,
            poisson_lambda=self.poisson_lambda,
            word_starts=_lookup(self.word_start_table, ids, first=True),
            line_breaks=_lookup(self.line_break_table, ids, first=False),
            per_line=self.per_line,
            sentence_end_mask=_lookup(self.sentence_end_table, ids, first=False),
            random_ratio=self.random_ratio,
            random_ids=self.random_ids,
        )


@dataclass(frozen=True)
class T5Objective:
    """T5 span corruption (Raffel et al. 2020, Sec. 3.1.4); targets hold only the dropped spans."""

    sentinel_ids: tuple[int, ...]
    eos_id: int
    noise_density: float
    mean_noise_span_length: float

    def __call__(self, ids: np.ndarray, rng: np.random.Generator) -> NoisedExample:
        return t5_span_corruption(
            ids,
            noise_density=self.noise_density,
            mean_noise_span_length=self.mean_noise_span_length,
            sentinel_ids=self.sentinel_ids,
            eos_id=self.eos_id,
            rng=rng,
        )


@dataclass(frozen=True)
class Identity:
    """No noise: input = target = the text (auto-encoding, or a sanity check)."""

    eos_id: int

    def __call__(self, ids: np.ndarray, rng: np.random.Generator) -> NoisedExample:
        full = np.append(ids, self.eos_id).astype(np.int64)
        return NoisedExample(input_ids=full, target_ids=full)


Objective = BartObjective | T5Objective | MixtureObjective | Identity


def build_objective(config: DataConfig, tokenizer: Tokenizer) -> Objective:
    """The objective `config.objective` names, checked against what the tokenizer provides."""
    if config.objective == "bart":
        noise = config.noise.bart
        if tokenizer.mask_id is None:
            raise ValueError("data.objective=bart needs a <mask> token, and the tokenizer has none")
        special = np.zeros(tokenizer.vocab_size, dtype=bool)
        special[tokenizer.special_ids] = True
        return BartObjective(
            mask_id=tokenizer.mask_id,
            eos_id=tokenizer.eos_id,
            mask_ratio=noise.mask_ratio,
            poisson_lambda=noise.poisson_lambda,
            random_ratio=noise.random_ratio,
            word_start_table=tokenizer.word_start_table() if noise.whole_word else None,
            line_break_table=(
                _ends_documents(tokenizer.line_break_table(), tokenizer.eos_id)
                if noise.within_lines or noise.keep_line_breaks
                else None
            ),
            per_line=noise.within_lines,
            sentence_end_table=(
                _ends_documents(tokenizer.sentence_end_table(), tokenizer.eos_id)
                if noise.permute_sentences
                else None
            ),
            random_ids=np.flatnonzero(~special) if noise.random_ratio > 0 else None,
        )
    if config.objective == "t5":
        noise = config.noise.t5
        raw_length, _ = config.t5_lengths
        spans = max(
            1, round(round(raw_length * noise.noise_density) / noise.mean_noise_span_length)
        )
        if len(tokenizer.sentinel_ids) < spans:
            raise ValueError(
                f"data.objective=t5 makes up to {spans} noise spans per row, but the tokenizer "
                f"has {len(tokenizer.sentinel_ids)} sentinels: raise "
                "data.tokenizer.num_sentinels or lower data.max_source_length"
            )
        return T5Objective(
            sentinel_ids=tuple(tokenizer.sentinel_ids),
            eos_id=tokenizer.eos_id,
            noise_density=noise.noise_density,
            mean_noise_span_length=noise.mean_noise_span_length,
        )
    if config.objective == "mixture":
        return build_mixture(
            config.noise.mixture,
            encode=tokenizer.encode,
            sentinel_ids=tokenizer.sentinel_ids,
            eos_id=tokenizer.eos_id,
            block_length=block_length(config),
        )
    return Identity(eos_id=tokenizer.eos_id)


def block_length(config: DataConfig) -> int:
    """Raw tokens per packed row: T5 rows give exactly max_source_length-token inputs; a
    mixture's rows are noised whole by every denoiser (s2s.data.mixture)."""
    if config.objective == "t5":
        return config.t5_lengths[0]
    if config.objective == "mixture":
        return mixture_block_length(
            config.noise.mixture, config.max_source_length, config.max_target_length
        )
    # BART / none: the target is the row plus EOS.
    return min(config.max_source_length, config.max_target_length) - 1


def _lookup(table: np.ndarray | None, ids: np.ndarray, *, first: bool) -> np.ndarray | None:
    if table is None:
        return None
    flags = table[ids]
    if first and len(flags):
        flags[0] = True  # a row always begins a word
    return flags


def _ends_documents(table: np.ndarray, eos_id: int) -> np.ndarray:
    """`table` (V,) with EOS also marked: packed rows end each document with EOS (the
    end-of-document id, s2s.data.prepared), which is a line break and a sentence end for the
    noise (never masked with keep_line_breaks, never crossed with within_lines)."""
    table = table.copy()
    table[eos_id] = True
    return table
