"""The training job a composed `conf/train.yaml` describes, in the numbers the plan needs.

The same composition as `python train.py` (the same overrides); nothing is built or read but
the config. The vocabulary is `model.vocab_size`: train() takes the tokenizer's, so give
`model.vocab_size=N` when the tokenizer differs from the preset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

import s2s.paths  # noqa: F401  (registers ${s2s_root:}, which the data paths use)
from s2s.config import ModelConfig
from s2s.data.config import DataConfig
from s2s.model.attention import check_backend
from s2s.plan.states import OPTIMIZERS
from s2s.throughput import compute_dtype


@dataclass(frozen=True)
class Job:
    """What one run trains, on how many devices, how."""

    model: ModelConfig
    source_len: int
    target_len: int
    global_batch: int  # rows per optimiser step, all devices together
    micro_batch: int  # rows per device per forward, as configured (or derived)
    world: int  # devices x nodes
    strategy: str  # "single" | "ddp" | "fsdp"
    precision: str  # Lightning's setting
    optimizer: str  # "adamw" | "adamw_scale"
    checkpointing: bool
    attention_backend: str
    max_steps: int
    padded: bool  # rows carry padding (unpacked data): masks are per row

    @property
    def compute_dtype(self) -> torch.dtype:
        return compute_dtype(self.precision)

    @property
    def accumulation(self) -> int:
        return self.global_batch // (self.micro_batch * self.world)


def job_from_config(cfg: DictConfig) -> Job:
    """The job of a composed train config (errors name the setting, in one line)."""
    model = ModelConfig.from_dict(_plain(cfg.model))
    data = DataConfig.from_dict(_plain(cfg.data))
    trainer = cfg.trainer
    world = _count(trainer.get("devices", 1), "trainer.devices")
    world *= _count(trainer.get("num_nodes", 1), "trainer.num_nodes")
    micro, _ = data.device_batch(world)  # as the trainer splits the global batch
    target = str(OmegaConf.select(cfg, "optimizer._target_") or "")
    optimizer = target.rsplit(".", 1)[-1]
    if optimizer not in OPTIMIZERS:
        raise ValueError(
            f"optimizer._target_={target!r}: the planner knows s2s.optim.adamw and adamw_scale"
        )
    return Job(
        model=model,
        source_len=data.max_source_length,
        target_len=data.max_target_length,
        global_batch=data.batch_size,
        micro_batch=micro,
        world=world,
        strategy=_strategy(trainer.get("strategy", "auto"), world),
        precision=str(trainer.get("precision", "32-true")),
        optimizer=optimizer,
        checkpointing=bool(cfg.get("activation_checkpointing", False)),
        attention_backend=check_backend(str(cfg.get("attention_backend", "sdpa"))),
        max_steps=int(trainer.get("max_steps", -1) or -1),
        padded=not data.pack,
    )


def _strategy(value: Any, world: int) -> str:
    if OmegaConf.is_config(value):
        target = str(value.get("_target_", ""))
        if "fsdp" in target.lower():
            return "fsdp"
        raise ValueError(f"trainer.strategy._target_={target!r}: the planner knows ddp and fsdp")
    name = str(value).lower()
    if name.startswith("fsdp"):
        return "fsdp"
    if name.startswith("ddp") or (name == "auto" and world > 1):
        return "ddp"
    if name in ("auto", "single_device"):
        return "single"
    raise ValueError(f"trainer.strategy={value!r}: the planner knows auto, ddp and fsdp")


def _count(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key}={value!r}: the planner needs a number of devices >= 1")
    return value


def _plain(node: Any) -> dict[str, Any]:
    values = OmegaConf.to_container(node, resolve=True)
    assert isinstance(values, dict)
    return values
