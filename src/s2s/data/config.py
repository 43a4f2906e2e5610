"""DataConfig: every knob of the data pipeline, mirrored field-for-field by `conf/data/*.yaml`."""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from s2s.data.mixture import DenoiserConfig, default_mixture, mixture_block_length
from s2s.data.noising import BartNoiseConfig, T5NoiseConfig, compute_input_and_target_lengths
from s2s.settings import from_mapping
from s2s.tokenizer import TokenizerConfig

Objective = Literal["bart", "t5", "none", "mixture"]
OBJECTIVES = typing.get_args(Objective)


@dataclass(frozen=True)
class NoiseConfig:
    """Settings of every objective; `DataConfig.objective` picks which one is used."""

    bart: BartNoiseConfig = field(default_factory=lambda: BartNoiseConfig(key_prefix=_BART))
    t5: T5NoiseConfig = field(default_factory=lambda: T5NoiseConfig(key_prefix=_T5))
    mixture: dict[str, DenoiserConfig] = field(default_factory=default_mixture)


_BART, _T5 = "data.noise.bart", "data.noise.t5"


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how it becomes batches.

    objective:   how `{"Text"}` records are noised ("bart" text infilling, "t5" span
                 corruption, "mixture" = UL2's mixture of denoisers (s2s.data.mixture),
                 "none" = plain auto-encoding); `{"Input","Target"}` pairs are always used as
                 they are.
    pack:        concatenate short texts and cut them into full-length rows (text records).
    min_row_length: with pack, training rows get a length drawn uniformly from
                 [min_row_length, the full row] (fixed per run by `seed`); validation rows stay
                 full. null = every row full.
    train_dir / val_dir: directories written by `python -m s2s.prepare`, streamed from disk
                 (memory flat in the corpus size) instead of train_path / val_path.
    batch_size:  GLOBAL batch, in sequences per optimiser step over all devices;
                 `micro_batch_size` (per device, per forward) is batch_size / devices, or
                 less when `micro_batch_size` caps it (the most a device takes: memory);
                 gradient accumulation makes up the rest.
    force_resume: resume even when the checkpoint was trained on another corpus or data seed
                 (its position, a row of the epoch's order, then points into another order);
                 refused otherwise (s2s.data.position).
    """

    train_path: str | None = None
    val_path: str | None = None
    test_path: str | None = None
    train_dir: str | None = None
    val_dir: str | None = None
    objective: Objective = "bart"
    max_source_length: int = 256
    max_target_length: int = 256
    pack: bool = True
    min_row_length: int | None = None
    batch_size: int = 32
    micro_batch_size: int | None = None
    num_workers: int = 1
    bucket_size: int = 50
    seed: int = 0
    force_resume: bool = False
    cache_dir: str | None = ".cache/s2s"
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)

    def __post_init__(self) -> None:
        for split in ("train", "val"):
            if getattr(self, f"{split}_path") and getattr(self, f"{split}_dir"):
                raise ValueError(
                    f"data.{split}_path and data.{split}_dir are both set: give one (a dataset "
                    "file, or a directory prepared by `python -m s2s.prepare`)"
                )
        if self.train_dir and self.min_row_length is not None:
            raise ValueError("data.min_row_length applies to in-memory data (data.train_path)")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"data.objective={self.objective!r} must be one of {OBJECTIVES}")
        for name in ("max_source_length", "max_target_length"):
            if getattr(self, name) < 2:
                raise ValueError(f"data.{name}={getattr(self, name)} must be >= 2")
        for name in ("batch_size", "bucket_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name}={getattr(self, name)} must be >= 1")
        if (
            self.min_row_length is not None
            and not 1 <= self.min_row_length < self.max_source_length
        ):
            raise ValueError(
                f"data.min_row_length={self.min_row_length} must be in "
                f"[1, data.max_source_length={self.max_source_length})"
            )
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ValueError(f"data.micro_batch_size={self.micro_batch_size} must be >= 1")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers={self.num_workers} must be >= 0")
        if self.objective == "t5":
            _, targets = self.t5_lengths
            if targets > self.max_target_length:
                raise ValueError(
                    f"data.max_target_length={self.max_target_length} is too short for T5 span "
                    f"corruption of {self.max_source_length}-token inputs: targets need {targets}"
                )
        if self.objective == "mixture":  # every denoiser must fit the lengths: else say which
            mixture_block_length(self.noise.mixture, self.max_source_length, self.max_target_length)

    def device_batch(self, world: int) -> tuple[int, int]:
        """(micro-batch, accumulation) on `world` devices: each device's share of the global
        batch, capped by `micro_batch_size`; the global batch is micro x world x accumulation.
        What the trainer runs and the planner plans (s2s.trainer, s2s.plan)."""
        micro = max(1, self.batch_size // world)
        if self.micro_batch_size is not None:
            micro = min(micro, self.micro_batch_size)
        if self.batch_size % (micro * world):
            raise ValueError(
                f"data.batch_size={self.batch_size} must be a multiple of "
                f"data.micro_batch_size ({micro}) x devices x nodes ({world})"
            )
        return micro, self.batch_size // (micro * world)

    @property
    def t5_lengths(self) -> tuple[int, int]:
        """(raw tokens per row, target length) so T5 inputs are exactly max_source_length."""
        t5 = self.noise.t5
        return compute_input_and_target_lengths(
            self.max_source_length, t5.noise_density, t5.mean_noise_span_length
        )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DataConfig:
        """Build from a (YAML) mapping; unknown or missing keys name the `data.*` key."""
        return from_mapping(cls, values, "data")
