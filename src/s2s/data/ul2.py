"""The UL2 objective: `(ids, rng) -> NoisedExample` for a row, one denoiser drawn per row.

The settings, the defaults (UL2's seven denoisers) and why every denoiser noises the whole
row are in `s2s.data.mixture`. Here: the draw, the S-denoiser's cut, and the binding to a
tokenizer (mode text ids, sentinels, EOS).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from s2s.data.mixture import (
    PREFIX,
    DenoiserConfig,
    longest_prefix_target,
    mode_budget,
    used_denoisers,
)
from s2s.data.noising import NoisedExample, noise_counts, t5_span_corruption


def prefix_split(length: int, density: float, rng: np.random.Generator) -> int:
    """Where a prefix denoiser cuts a `length`-token row: the input's token count.

    The target takes t tokens, t uniform over [1, longest_prefix_target]: at density 0.5 the
    cut is uniform over [1, length - 1], as T5's `random_prefix_noise_mask` (t5/data/
    preprocessors.py), which UL2's S-denoiser uses through T5's `prefix_lm`; at a density
    d < 0.5 (ours) the target is at most 2d of the row, d on average. Rows of fewer than 2
    tokens stay whole in the input.
    """
    longest = longest_prefix_target(length, density)
    if longest == 0:
        return length
    return length - int(rng.integers(1, longest + 1))


@dataclass(frozen=True)
class Denoiser:
    name: str
    config: DenoiserConfig
    mode_ids: np.ndarray  # (M,)


@dataclass(frozen=True)
class MixtureObjective:
    """`(ids, rng) -> NoisedExample`: one denoiser by weight, its mode prefix, its noise."""

    denoisers: tuple[Denoiser, ...]
    cumulative: np.ndarray  # (D,) cumulative weights, last = 1
    sentinel_ids: tuple[int, ...]
    eos_id: int

    def choose(self, rng: np.random.Generator) -> Denoiser:
        """The row's denoiser: the generator's first draw."""
        index = int(np.searchsorted(self.cumulative, rng.random(), side="right"))
        return self.denoisers[min(index, len(self.denoisers) - 1)]

    def apply(self, denoiser: Denoiser, ids: np.ndarray, rng: np.random.Generator) -> NoisedExample:
        """`denoiser`'s example of the whole row `ids` (L,): every token lands in the input
        or the target, once."""
        ids = np.asarray(ids)
        config = denoiser.config
        if config.kind == "prefix":
            cut = prefix_split(len(ids), config.noise_density, rng)
            eos = np.array([self.eos_id])
            inputs, targets = np.concatenate([ids[:cut], eos]), np.concatenate([ids[cut:], eos])
        else:
            noised = t5_span_corruption(
                ids,
                noise_density=config.noise_density,
                mean_noise_span_length=config.mean_noise_span_length,
                sentinel_ids=np.asarray(self.sentinel_ids),
                eos_id=self.eos_id,
                rng=rng,
            )
            inputs, targets = noised.input_ids, noised.target_ids
        inputs = np.concatenate([denoiser.mode_ids, inputs]).astype(np.int64)
        return NoisedExample(input_ids=inputs, target_ids=np.asarray(targets, dtype=np.int64))

    def __call__(self, ids: np.ndarray, rng: np.random.Generator) -> NoisedExample:
        return self.apply(self.choose(rng), ids, rng)


def build_mixture(
    mixture: dict[str, DenoiserConfig],
    *,
    encode,
    sentinel_ids: list[int],
    eos_id: int,
    block_length: int,
) -> MixtureObjective:
    """Bind the mixture to a tokenizer (`encode` for the mode texts, its sentinels and EOS)
    for rows of at most `block_length` tokens (`s2s.data.mixture.mixture_block_length`)."""
    denoisers = []
    for name, config in used_denoisers(mixture).items():
        mode_ids = np.asarray(encode(config.mode) if config.mode else [], dtype=np.int64)
        if len(mode_ids) > mode_budget(config):
            raise ValueError(
                f"{PREFIX}.{name}.mode={config.mode!r} encodes to {len(mode_ids)} tokens, more "
                f"than the {mode_budget(config)} its rows keep room for: shorten it"
            )
        if config.kind == "spans":
            density, mean = config.noise_density, config.mean_noise_span_length
            spans = noise_counts(block_length, density, mean)[1]
            if spans > len(sentinel_ids):
                raise ValueError(
                    f"{PREFIX}.{name} makes up to {spans} noise spans per row, but the "
                    f"tokenizer has {len(sentinel_ids)} sentinels: raise "
                    "data.tokenizer.num_sentinels"
                )
        denoisers.append(Denoiser(name, config, mode_ids))
    weights = np.array([d.config.weight for d in denoisers], dtype=np.float64)
    return MixtureObjective(
        denoisers=tuple(denoisers),
        cumulative=np.cumsum(weights / weights.sum()),
        sentinel_ids=tuple(sentinel_ids),
        eos_id=eos_id,
    )
