"""GenerationConfig: every decoding knob, validated once; mirrored key for key by
`conf/generate.yaml` (under `generate:`).

Strategies
    greedy  the most likely token at every step.
    beam    beam search with `num_beams` hypotheses per input, scored by
            sum(log p) / length**length_penalty (Wu et al. 2016, GNMT Sec. 7, simplified to
            the exponent form Hugging Face `transformers` uses).
    sample  ancestral sampling from softmax(logits / temperature), optionally restricted to
            the `top_k` most likely tokens (Fan et al. 2018) and to the smallest set whose
            probability reaches `top_p` (nucleus sampling, Holtzman et al. 2020).

Applied to every strategy: `repetition_penalty` (Keskar et al. 2019, CTRL Sec. 4.1),
`no_repeat_ngram_size` (Paulus et al. 2018, Sec. 2.5), `min_new_tokens` (EOS is forbidden
before that many tokens), forced first / last tokens (Hugging Face BART's framing), stop at
EOS per sequence.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from s2s.settings import check_types, from_mapping, require

STRATEGIES = ("greedy", "beam", "sample")


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding knobs. Derive variants with `dataclasses.replace`, which re-validates.

    max_new_tokens: most tokens generated per input (EOS included).
    min_new_tokens: EOS is not allowed before this many tokens.
    strategy: "greedy" | "beam" | "sample".
    num_beams: beams per input (beam only; 1 makes beam search equal greedy).
    length_penalty: exponent of the length normaliser (beam only; 0 = raw log-probability,
        > 0 favours longer hypotheses).
    early_stopping: beam only. True stops an input as soon as it has `num_beams` finished
        hypotheses; False stops it once no running beam can still beat the worst finished one
        at its current length (the `transformers` heuristic).
    temperature, top_k, top_p: sample only; top_k=0 and top_p=1.0 switch those filters off.
    repetition_penalty: > 1 discourages tokens already in the output (1.0 = off).
    no_repeat_ngram_size: forbid repeating any n-gram of this size (0 = off).
    seed: seeds the sampling generator, so the same seed gives the same output.
    forced_bos_token_id: the first token is always this one (Hugging Face BART's
        `forced_bos_token_id`); None: off.
    forced_eos_token_id: the token emitted when max_new_tokens is reached (BART's
        `forced_eos_token_id`); None: off.
    """

    max_new_tokens: int = 64
    min_new_tokens: int = 0
    strategy: str = "greedy"
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    seed: int = 0
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | None = None

    def __post_init__(self) -> None:
        check_types(self, "generate")
        require(
            self.strategy in STRATEGIES,
            f"generate.strategy={self.strategy!r} must be one of {', '.join(STRATEGIES)}",
        )
        require(
            self.max_new_tokens >= 1, f"generate.max_new_tokens={self.max_new_tokens} must be >= 1"
        )
        require(
            0 <= self.min_new_tokens <= self.max_new_tokens,
            f"generate.min_new_tokens={self.min_new_tokens} must be in "
            f"[0, generate.max_new_tokens={self.max_new_tokens}]",
        )
        require(self.num_beams >= 1, f"generate.num_beams={self.num_beams} must be >= 1")
        require(self.temperature > 0, f"generate.temperature={self.temperature} must be > 0")
        require(self.top_k >= 0, f"generate.top_k={self.top_k} must be >= 0 (0 = off)")
        require(0 < self.top_p <= 1, f"generate.top_p={self.top_p} must be in (0, 1]")
        require(
            self.repetition_penalty > 0,
            f"generate.repetition_penalty={self.repetition_penalty} must be > 0 (1.0 = off)",
        )
        require(
            self.no_repeat_ngram_size >= 0,
            f"generate.no_repeat_ngram_size={self.no_repeat_ngram_size} must be >= 0 (0 = off)",
        )
        for name in ("forced_bos_token_id", "forced_eos_token_id"):
            value = getattr(self, name)
            require(value is None or value >= 0, f"generate.{name}={value} must be >= 0 or null")
        # Knobs that only one strategy reads: setting them elsewhere is a mistake, not a no-op.
        if self.strategy != "beam":
            require(
                self.num_beams == 1,
                f"generate.num_beams={self.num_beams} needs generate.strategy=beam "
                f"(got {self.strategy!r})",
            )
        if self.strategy != "sample":
            for name, off in (("temperature", 1.0), ("top_k", 0), ("top_p", 1.0)):
                value = getattr(self, name)
                require(
                    value == off,
                    f"generate.{name}={value} needs generate.strategy=sample "
                    f"(got {self.strategy!r})",
                )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: typing.Mapping[str, Any]) -> GenerationConfig:
        """Build from a mapping (e.g. the `generate` node of a Hydra config); unknown keys raise."""
        return from_mapping(cls, values, "generate")
