"""UL2's mixture of denoisers (Tay et al. 2022, "UL2: Unifying Language Learning Paradigms",
arXiv:2205.05131): the denoiser settings, and how long a row they can noise whole.

Each row is noised by ONE denoiser, drawn by weight with the row's own generator (so the
choice, like the noise, is fresh every epoch and identical after a resume), and the input
starts with that denoiser's mode text (UL2's "paradigm tokens" [NLU], [NLG], [S2S], which
were plain text for its tokenizer, as they are here):

    spans    T5 span corruption at the denoiser's noise density and mean span length: UL2's
             R (regular) and X (extreme: long spans or a high density)
    prefix   prefix language modelling, UL2's S: the row is cut at a random point; the input
             is the part before it, the target the part after (`s2s.data.ul2.prefix_split`)

How rows are cut (docs/data.md, "UL2"): every row is one fixed block of the stream (row i =
tokens [i*L, (i+1)*L), so a resume and the sampler's permutation stay exact), and every
denoiser noises the WHOLE block: no token of the stream is dropped. L is the longest block
whose worst case fits `data.max_source_length` for every denoiser (S's worst input is the
whole row but one token, plus the mode text); every denoiser's worst-case target must then fit
`data.max_target_length`, or the config is refused with the lengths it needs. UL2 itself
trained at 512/512 (inputs/targets, the google/ul2 model card), where the seven fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from s2s.data.noising import noise_counts

DenoiserKind = Literal["spans", "prefix"]
PREFIX = "data.noise.mixture"


@dataclass(frozen=True)
class DenoiserConfig:
    """One denoiser of `data.noise.mixture.<name>`.

    noise_density: spans: the share of the row masked; prefix: the MEAN share of the row
    in the target, the cut point uniform (0.5 = UL2's S: uniform over the whole row).
    mean_noise_span_length: spans only.
    """

    weight: float
    kind: DenoiserKind = "spans"
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    mode: str = ""  # text put before the input, e.g. "[NLU]" ("" = none)
    key_prefix: str = field(default=PREFIX, repr=False, compare=False, kw_only=True)

    def __post_init__(self) -> None:
        p = self.key_prefix
        if not (isinstance(self.weight, (int, float)) and 0 <= self.weight < math.inf):
            raise ValueError(f"{p}.weight={self.weight!r} must be a number >= 0")
        if self.kind not in ("spans", "prefix"):
            raise ValueError(f"{p}.kind={self.kind!r} must be spans or prefix")
        if not 0 < self.noise_density < 1:
            raise ValueError(f"{p}.noise_density={self.noise_density!r} must be in (0, 1)")
        if self.kind == "prefix" and self.noise_density > 0.5:
            raise ValueError(
                f"{p}.noise_density={self.noise_density!r}: a prefix denoiser's mean target "
                "share is at most 0.5 (0.5 = the cut point uniform over the whole row)"
            )
        if not self.mean_noise_span_length > 0:
            raise ValueError(f"{p}.mean_noise_span_length must be > 0")


def default_mixture() -> dict[str, DenoiserConfig]:
    """UL2's seven denoisers (Tay et al. 2022, Sec. 3.1.2 and the appendix's `ul2_objective`):
    R: spans of 3 and 8 at 15%; X: spans of 3 and 8 at 50%, 64 at 15% and 50%; S: prefix LM
    cut uniformly at random (T5's `random_prefix_noise_mask`). Mixing: S 20%, R and X 40%
    each, shared evenly among their denoisers (the paper's suggestion, Sec. 4.5, as public
    UL2 t5x configs set `ul2_objective(rates=...)`)."""
    spans = {
        "R1": (0.2, 0.15, 3.0, "[NLU]"),
        "R2": (0.2, 0.15, 8.0, "[NLU]"),
        "X1": (0.1, 0.5, 3.0, "[NLG]"),
        "X2": (0.1, 0.5, 8.0, "[NLG]"),
        "X3": (0.1, 0.15, 64.0, "[NLG]"),
        "X4": (0.1, 0.5, 64.0, "[NLG]"),
    }
    mixture = {
        name: DenoiserConfig(weight, "spans", density, mean, mode, key_prefix=f"{PREFIX}.{name}")
        for name, (weight, density, mean, mode) in spans.items()
    }
    mixture["S"] = DenoiserConfig(0.2, "prefix", 0.5, 3.0, "[S2S]", key_prefix=f"{PREFIX}.S")
    return mixture


def used_denoisers(mixture: dict[str, DenoiserConfig]) -> dict[str, DenoiserConfig]:
    """The denoisers with a weight above 0; ValueError if there are none."""
    used = {name: c for name, c in mixture.items() if c.weight > 0}
    if not used:
        raise ValueError(f"{PREFIX}: every denoiser has weight 0")
    return used


def mode_budget(config: DenoiserConfig) -> int:
    """Input positions kept for the mode text before the tokenizer is known: its UTF-8 bytes
    plus one, the most tokens a byte-level BPE or a SentencePiece model (a leading "▁") makes
    of it. `s2s.data.ul2.build_mixture` checks the real count."""
    return len(config.mode.encode("utf-8")) + 1 if config.mode else 0


def longest_prefix_target(raw: int, density: float) -> int:
    """The most tokens a prefix denoiser puts in the target of a `raw`-token row (no EOS)."""
    if raw < 2:
        return 0
    return min(raw - 1, max(1, round(2 * density * raw)))


def worst_lengths(config: DenoiserConfig, raw: int, mode: int) -> tuple[int, int]:
    """The longest (input, target), EOS and `mode` prefix tokens included, this denoiser makes
    of a `raw`-token row (span corruption's lengths are fixed by the row's length)."""
    if config.kind == "prefix":
        target = longest_prefix_target(raw, config.noise_density)
        shortest = min(target, 1)  # a row of 2 or more tokens leaves the target one at least
        return mode + raw - shortest + 1, target + 1
    noise, spans = noise_counts(raw, config.noise_density, config.mean_noise_span_length)
    return mode + raw - noise + spans + 1, noise + spans + 1


def mixture_block_length(
    mixture: dict[str, DenoiserConfig], max_source: int, max_target: int
) -> int:
    """Raw tokens per packed row: the longest row every denoiser noises whole within
    `max_source` (mode text included); ValueError naming the keys when a denoiser's target
    would not fit `max_target`."""
    used = used_denoisers(mixture)
    for raw in range(max_source, 1, -1):
        if all(worst_lengths(c, raw, mode_budget(c))[0] <= max_source for c in used.values()):
            break
    else:
        raise ValueError(
            f"data.max_source_length={max_source} is too short for {PREFIX}: no row of 2 or "
            "more tokens fits with its mode text; raise it"
        )
    needs = {name: worst_lengths(c, raw, mode_budget(c))[1] for name, c in used.items()}
    over = {name: target for name, target in needs.items() if target > max_target}
    if over:
        names = ", ".join(f"{PREFIX}.{name}" for name in over)
        most = max(over.values())
        prefix = any(used[name].kind == "prefix" for name in over)
        hint = " (or lower the prefix denoiser's noise_density)" if prefix else ""
        raise ValueError(
            f"{names} make targets of up to {most} tokens from {raw}-token rows (what "
            f"data.max_source_length={max_source} holds), more than "
            f"data.max_target_length={max_target}: raise it to {most}{hint}; UL2 trained at "
            "512/512"
        )
    return raw
