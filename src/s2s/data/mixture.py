"""A mixture of denoisers (UL2: Tay et al. 2022, "UL2: Unifying Language Learning Paradigms").

Each row is noised by ONE denoiser, drawn by weight with the row's own generator (so the
choice, like the noise, is fresh every epoch and identical after a resume), and the input
starts with that denoiser's mode prefix (UL2's "paradigm tokens" [NLU], [NLG], [S2S], which
were plain text for its tokenizer, as they are here):

    spans    T5 span corruption at the denoiser's noise density and mean span length: UL2's R
             (regular: 15%, spans of 3) and X (extreme: long spans or a high density)
    prefix   prefix language modelling, UL2's S: the input is the row's beginning, the target
             its last `noise_density` share

Rows are packed at the longest raw length any denoiser can use (`mixture_block_length`); each
denoiser crops the row to the longest prefix whose input (mode prefix included) fits
`data.max_source_length` and whose target fits `data.max_target_length`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from s2s.data.noising import NoisedExample, noise_counts, t5_span_corruption

DenoiserKind = Literal["spans", "prefix"]


@dataclass(frozen=True)
class DenoiserConfig:
    """One denoiser of `data.noise.mixture.<name>`."""

    weight: float
    kind: DenoiserKind = "spans"
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    mode: str = ""  # text put before the input, e.g. "[NLU]" ("" = none)
    key_prefix: str = field(default="data.noise.mixture", repr=False, compare=False, kw_only=True)

    def __post_init__(self) -> None:
        p = self.key_prefix
        if not (isinstance(self.weight, (int, float)) and 0 <= self.weight < math.inf):
            raise ValueError(f"{p}.weight={self.weight!r} must be a number >= 0")
        if self.kind not in ("spans", "prefix"):
            raise ValueError(f"{p}.kind={self.kind!r} must be spans or prefix")
        if not 0 < self.noise_density < 1:
            raise ValueError(f"{p}.noise_density={self.noise_density!r} must be in (0, 1)")
        if not self.mean_noise_span_length > 0:
            raise ValueError(f"{p}.mean_noise_span_length must be > 0")


def default_mixture() -> dict[str, DenoiserConfig]:
    """R, X and S as in UL2's mixture (the weights are ours: half regular span corruption)."""
    prefix = "data.noise.mixture"
    return {
        "R": DenoiserConfig(0.5, "spans", 0.15, 3.0, "[NLU]", key_prefix=f"{prefix}.R"),
        "X": DenoiserConfig(0.25, "spans", 0.5, 32.0, "[NLG]", key_prefix=f"{prefix}.X"),
        "S": DenoiserConfig(0.25, "prefix", 0.25, 3.0, "[S2S]", key_prefix=f"{prefix}.S"),
    }


def _lengths(config: DenoiserConfig, raw: int, mode: int) -> tuple[int, int]:
    """(input, target) lengths, EOS included, for a row of `raw` tokens."""
    if config.kind == "prefix":
        target = _prefix_target(raw, config.noise_density)
        return mode + raw - target + 1, target + 1
    noise, spans = noise_counts(raw, config.noise_density, config.mean_noise_span_length)
    return mode + raw - noise + spans + 1, noise + spans + 1


def _prefix_target(raw: int, density: float) -> int:
    return min(max(round(raw * density), 1), raw - 1) if raw > 1 else 0


def fit_raw_length(
    config: DenoiserConfig, max_source: int, max_target: int, mode: int, name: str
) -> int:
    """The longest row this denoiser can noise within the length limits."""
    for raw in range(max_source + max_target, 1, -1):
        inputs, targets = _lengths(config, raw, mode)
        if inputs <= max_source and targets <= max_target:
            return raw
    raise ValueError(
        f"data.noise.mixture.{name}: no row fits data.max_source_length={max_source} and "
        f"data.max_target_length={max_target}; raise them or change this denoiser"
    )


def mixture_block_length(
    mixture: dict[str, DenoiserConfig], max_source: int, max_target: int
) -> int:
    """Raw tokens per packed row: the most any denoiser uses (mode prefixes not counted)."""
    return max(
        fit_raw_length(c, max_source, max_target, 0, name)
        for name, c in mixture.items()
        if c.weight > 0
    )


@dataclass(frozen=True)
class Denoiser:
    name: str
    config: DenoiserConfig
    mode_ids: np.ndarray  # (M,)
    raw_length: int
    max_spans: int


@dataclass(frozen=True)
class MixtureObjective:
    """`(ids, rng) -> NoisedExample`: one denoiser by weight, its mode prefix, its noise."""

    denoisers: tuple[Denoiser, ...]
    cumulative: np.ndarray  # (D,) cumulative weights, last = 1
    sentinel_ids: tuple[int, ...]
    eos_id: int

    def choose(self, rng: np.random.Generator) -> Denoiser:
        index = int(np.searchsorted(self.cumulative, rng.random(), side="right"))
        return self.denoisers[min(index, len(self.denoisers) - 1)]

    def __call__(self, ids: np.ndarray, rng: np.random.Generator) -> NoisedExample:
        denoiser = self.choose(rng)
        ids = np.asarray(ids)[: denoiser.raw_length]
        eos = np.array([self.eos_id])
        if denoiser.config.kind == "prefix":
            cut = len(ids) - _prefix_target(len(ids), denoiser.config.noise_density)
            inputs, targets = np.concatenate([ids[:cut], eos]), np.concatenate([ids[cut:], eos])
        else:
            noised = t5_span_corruption(
                ids,
                noise_density=denoiser.config.noise_density,
                mean_noise_span_length=denoiser.config.mean_noise_span_length,
                sentinel_ids=np.asarray(self.sentinel_ids),
                eos_id=self.eos_id,
                rng=rng,
            )
            inputs, targets = noised.input_ids, noised.target_ids
        inputs = np.concatenate([denoiser.mode_ids, inputs]).astype(np.int64)
        return NoisedExample(input_ids=inputs, target_ids=np.asarray(targets, dtype=np.int64))


def build_mixture(
    mixture: dict[str, DenoiserConfig],
    *,
    encode,
    sentinel_ids: list[int],
    eos_id: int,
    max_source: int,
    max_target: int,
) -> MixtureObjective:
    """Bind the mixture to a tokenizer (`encode` for the mode prefixes) and the row lengths."""
    used = {name: c for name, c in mixture.items() if c.weight > 0}
    if not used:
        raise ValueError("data.noise.mixture: every denoiser has weight 0")
    denoisers = []
    for name, config in used.items():
        mode_ids = np.asarray(encode(config.mode) if config.mode else [], dtype=np.int64)
        raw = fit_raw_length(config, max_source, max_target, len(mode_ids), name)
        spans = 0
        if config.kind == "spans":
            spans = noise_counts(raw, config.noise_density, config.mean_noise_span_length)[1]
        if spans > len(sentinel_ids):
            raise ValueError(
                f"data.noise.mixture.{name} makes up to {spans} noise spans per row, but the "
                f"tokenizer has {len(sentinel_ids)} sentinels: raise data.tokenizer.num_sentinels"
            )
        denoisers.append(Denoiser(name, config, mode_ids, raw, spans))
    weights = np.array([d.config.weight for d in denoisers], dtype=np.float64)
    return MixtureObjective(
        denoisers=tuple(denoisers),
        cumulative=np.cumsum(weights / weights.sum()),
        sentinel_ids=tuple(sentinel_ids),
        eos_id=eos_id,
    )
