"""Pure noising functions for denoising pre-training: shared types and T5 span corruption.

Every function takes the raw token ids of ONE text (1-D integer array, no padding, no EOS) and an
explicit `numpy.random.Generator`; nothing here touches global RNG state. Seed the generator per
item with `noise_rng(seed, epoch, index)` so noise changes every epoch but is identical on every
DDP rank and after a resume (fairseq's `DenoisingDataset` seeds by (seed, epoch, index) too).

BART text infilling and sentence permutation live in `s2s.data.infilling`.

Notation: L raw text length (tokens), N number of noise spans.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np

from s2s.settings import number


@dataclass(frozen=True, eq=False)
class NoisedExample:
    """One noised training pair (both end with EOS; no padding).

    input_ids:  (S,) encoder input.
    target_ids: (T,) decoder target (teacher forcing shifts it; not done here).
    """

    input_ids: np.ndarray
    target_ids: np.ndarray


def noise_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for item `index` in `epoch`: same key -> same noise, on any rank or process.

    Validation should pass a constant epoch (e.g. 0) so its noise never changes.
    """
    return np.random.default_rng([seed, epoch, index])


# ---------------------------------------------------------------------------------------------
# Configs (built by the data module from the YAML keys `data.noise.*`)
# ---------------------------------------------------------------------------------------------


def _check_open_unit(prefix: str, name: str, value: object, *, closed_low: bool) -> None:
    v = number(f"{prefix}.{name}", value)
    low_ok = v >= 0 if closed_low else v > 0
    if not (low_ok and v < 1):  # also rejects NaN
        interval = "[0, 1)" if closed_low else "(0, 1)"
        raise ValueError(f"{prefix}.{name}={value!r} must be in {interval}")


def _check_positive(prefix: str, name: str, value: object) -> None:
    v = number(f"{prefix}.{name}", value)
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{prefix}.{name}={value!r} must be > 0")


@dataclass(frozen=True)
class T5NoiseConfig:
    """T5 span corruption (Raffel et al. 2020, Sec. 3.1.4): defaults are the paper's."""

    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    key_prefix: str = field(default="data.noise", repr=False, compare=False, kw_only=True)

    def __post_init__(self) -> None:
        _check_open_unit(self.key_prefix, "noise_density", self.noise_density, closed_low=False)
        _check_positive(self.key_prefix, "mean_noise_span_length", self.mean_noise_span_length)


@dataclass(frozen=True)
class BartNoiseConfig:
    """BART text infilling (Lewis et al. 2020, Sec. 2.2 and 5.1): defaults are the paper's."""

    mask_ratio: float = 0.3
    poisson_lambda: float = 3.0
    random_ratio: float = 0.0
    permute_sentences: bool = False
    whole_word: bool = False
    within_lines: bool = False  # ours: each line noised on its own, line breaks never masked
    keep_line_breaks: bool = False  # ours: spans drawn over the row, cut at line breaks
    key_prefix: str = field(default="data.noise", repr=False, compare=False, kw_only=True)

    def __post_init__(self) -> None:
        p = self.key_prefix
        _check_open_unit(p, "mask_ratio", self.mask_ratio, closed_low=True)
        _check_positive(p, "poisson_lambda", self.poisson_lambda)
        v = number(f"{p}.random_ratio", self.random_ratio)
        if not 0 <= v <= 1:
            raise ValueError(f"{p}.random_ratio={self.random_ratio!r} must be in [0, 1]")
        for name in ("permute_sentences", "whole_word", "within_lines", "keep_line_breaks"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{p}.{name}={getattr(self, name)!r} must be true or false")


# ---------------------------------------------------------------------------------------------
# T5 span corruption
# ---------------------------------------------------------------------------------------------


def as_ids(ids: np.ndarray) -> np.ndarray:
    """`ids` as a 1-D integer array; ValueError otherwise."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be a 1-D integer array, got shape {ids.shape} {ids.dtype}")
    return ids


def noise_counts(
    length: int, noise_density: float, mean_noise_span_length: float
) -> tuple[int, int]:
    """(num_noise_tokens, num_noise_spans) for a text of `length` tokens.

    As T5's `random_spans_noise_mask` (t5/data/preprocessors.py): noise = round(length * density)
    (half to even, like tf.round) clamped to [1, length - 1]; spans = round(noise / mean) >= 1.
    Deviation: spans are also capped at the number of noise and of non-noise tokens, so every
    span and every gap is non-empty (the reference makes empty segments there). Texts shorter
    than 2 tokens get no noise (the reference pads to 2 and crops, which gives the same).
    """
    if length < 2:
        return 0, 0
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = max(round(num_noise / mean_noise_span_length), 1)
    return num_noise, min(num_spans, num_noise, length - num_noise)


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Lengths (num_segments,) >= 1 summing to num_items, uniform over all such compositions.

    Same distribution as the reference (shuffle (num_segments - 1) ones among num_items - 1 slots,
    cumsum, segment sums): here the ones' positions are drawn directly as distinct cut points.
    """
    cuts = np.sort(rng.choice(num_items - 1, size=num_segments - 1, replace=False)) + 1
    return np.diff(cuts, prepend=0, append=num_items)


def random_spans_noise_mask(
    length: int, noise_density: float, mean_noise_span_length: float, rng: np.random.Generator
) -> np.ndarray:
    """T5's noise mask: (length,) bool, True = noise.

    Layout (as the reference): non-noise, noise, non-noise, noise, ..., N of each, so the first
    token is never noise and (for length >= 2) the last one always is. Counts: `noise_counts`.
    """
    num_noise, num_spans = noise_counts(length, noise_density, mean_noise_span_length)
    if num_spans == 0:
        return np.zeros(length, dtype=bool)
    noise_lengths = _random_segmentation(num_noise, num_spans, rng)
    keep_lengths = _random_segmentation(length - num_noise, num_spans, rng)
    interleaved = np.stack([keep_lengths, noise_lengths], axis=1).reshape(-1)  # (2N,)
    return np.repeat(np.tile(np.array([False, True]), num_spans), interleaved)


def compute_input_and_target_lengths(
    inputs_length: int, noise_density: float, mean_noise_span_length: float
) -> tuple[int, int]:
    """(tokens_length, targets_length) for span corruption with exactly `inputs_length` inputs.

    Crop raw texts to `tokens_length`: a text of that length corrupts into exactly
    `inputs_length` input ids and `targets_length` target ids (one sentinel per span, EOS
    included). As T5's `random_spans_helper` (t5/data/preprocessors.py): the largest length
    whose inputs fit, plus its density-0.5 tweak that trims one token so targets do not exceed
    inputs. Counts come from `noise_counts`, so they match `random_spans_noise_mask` exactly.
    Inputs come out one short of `inputs_length` only when no length reaches it exactly, which
    needs the span cap of `noise_counts` to bind (e.g. density 0.5 with mean span length 1).
    """
    if inputs_length < 2:
        raise ValueError(f"inputs_length={inputs_length} must be >= 2 (room for a token and EOS)")

    def lengths(tokens_length: int) -> tuple[int, int]:
        noise, spans = noise_counts(tokens_length, noise_density, mean_noise_span_length)
        return tokens_length - noise + spans + 1, noise + spans + 1

    tokens_length = inputs_length - 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    actual_inputs, targets_length = lengths(tokens_length)
    if noise_density == 0.5 and targets_length > actual_inputs:
        shorter = lengths(tokens_length - 1)
        if shorter[0] == actual_inputs:  # the reference assumes this; we check it
            tokens_length, targets_length = tokens_length - 1, shorter[1]
    return tokens_length, targets_length


def t5_apply_mask(
    ids: np.ndarray, mask: np.ndarray, sentinel_ids: np.ndarray, eos_id: int
) -> NoisedExample:
    """Span corruption with a given mask (L,) bool, True = noise (Raffel et al. 2020, Fig. 2).

    Input: the text with noise span k replaced by the single id sentinel_ids[k], then EOS.
    Target: sentinel_ids[0], span 0, sentinel_ids[1], span 1, ..., then EOS. No trailing
    sentinel is added after the last span (with `random_spans_noise_mask` the text always ends
    in noise, where the reference adds none either).
    """
    ids = as_ids(ids)
    mask = np.asarray(mask, dtype=bool)
    sentinel_ids = np.asarray(sentinel_ids)
    if mask.shape != ids.shape:
        raise ValueError(f"mask shape {mask.shape} != ids shape {ids.shape}")
    starts = mask.copy()
    starts[1:] &= ~mask[:-1]  # first token of each noise span
    num_spans = int(starts.sum())
    if num_spans > len(sentinel_ids):
        raise ValueError(f"{num_spans} noise spans but only {len(sentinel_ids)} sentinel ids")
    eos = np.array([eos_id], dtype=ids.dtype)

    corrupted = ids.copy()
    corrupted[starts] = sentinel_ids[:num_spans]
    inputs = np.concatenate([corrupted[~mask | starts], eos])

    noise_tokens = ids[mask]
    noise_starts = starts[mask]
    # Output slot of noise token j: j plus the sentinels written so far (one per span started).
    slots = np.arange(len(noise_tokens)) + np.cumsum(noise_starts)
    targets = np.empty(len(noise_tokens) + num_spans + 1, dtype=ids.dtype)
    targets[slots] = noise_tokens
    targets[slots[noise_starts] - 1] = sentinel_ids[:num_spans]
    targets[-1] = eos_id
    return NoisedExample(input_ids=inputs, target_ids=targets)


def t5_span_corruption(
    ids: np.ndarray,
    *,
    noise_density: float,
    mean_noise_span_length: float,
    sentinel_ids: np.ndarray,
    eos_id: int,
    rng: np.random.Generator,
) -> NoisedExample:
    """T5 span corruption of one text (L,): `random_spans_noise_mask` then `t5_apply_mask`.

    `ids` must not contain sentinel ids or EOS. Raises ValueError when the text has more noise
    spans than `sentinel_ids` (crop texts with `compute_input_and_target_lengths`).
    """
    ids = as_ids(ids)
    mask = random_spans_noise_mask(len(ids), noise_density, mean_noise_span_length, rng)
    return t5_apply_mask(ids, mask, sentinel_ids, eos_id)


def t5_reconstruct(
    input_ids: np.ndarray, target_ids: np.ndarray, sentinel_ids: np.ndarray, eos_id: int
) -> np.ndarray:
    """Invert `t5_apply_mask`: put each target span back in place of its sentinel. (L,) ids."""
    input_ids, target_ids = as_ids(input_ids), as_ids(target_ids)
    if not all(len(a) and a[-1] == eos_id for a in (input_ids, target_ids)):
        raise ValueError("input_ids and target_ids must both end with eos_id")
    inputs, targets = input_ids[:-1], target_ids[:-1]
    sentinel_ids = np.asarray(sentinel_ids)
    spans: dict[int, np.ndarray] = {}
    target_marks = np.flatnonzero(np.isin(targets, sentinel_ids))
    if len(targets) and (len(target_marks) == 0 or target_marks[0] != 0):
        raise ValueError("target_ids must start with a sentinel id")
    bounds = np.append(target_marks, len(targets))
    for mark, end in pairwise(bounds):
        spans[int(targets[mark])] = targets[mark + 1 : end]
    pieces = []
    prev = 0
    for mark in np.flatnonzero(np.isin(inputs, sentinel_ids)):
        sentinel = int(inputs[mark])
        if sentinel not in spans:
            raise ValueError(f"sentinel {sentinel} is in input_ids but not in target_ids")
        pieces += [inputs[prev:mark], spans[sentinel]]
        prev = mark + 1
    pieces.append(inputs[prev:])
    return np.concatenate(pieces)
