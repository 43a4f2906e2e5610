"""The Lightning Trainer of a run: `cfg.trainer` checked (keys Lightning would not name in its
errors), callbacks and loggers instantiated, gradient accumulation derived from the global
batch size. `trainer.peak_tflops` is s2s's (the peak MFU is measured against), not Lightning's.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import re
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf

from s2s.checkpoint_io import AtomicCheckpointIO
from s2s.data.datamodule import S2SDataModule
from s2s.guard import NonFiniteGuard
from s2s.preemption import Preemption
from s2s.report import ValidationHistory
from s2s.resume import ResumeState
from s2s.run_dir import LAST_CHECKPOINT

log = logging.getLogger(__name__)


def check_accelerator(cfg: DictConfig) -> None:
    """trainer=gpu on a machine without CUDA: one line now, not Lightning's error later."""
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is available on this machine "
            "(torch.cuda.is_available() is False): use trainer=cpu"
        )


def make_trainer(cfg: DictConfig, datamodule: S2SDataModule) -> L.Trainer:
    """The Trainer, with gradient accumulation derived from the global batch size."""
    trainer_cfg = trainer_arguments(cfg.trainer)
    # A group entry set to null (e.g. callbacks.progress_bar=null) switches that piece off.
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    _keep_earlier_metrics(loggers)
    trainer = hydra.utils.instantiate(
        trainer_cfg,
        callbacks=[
            *callbacks,
            ResumeState(datamodule),
            ValidationHistory(),
            *_fault_callbacks(cfg),
        ],
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
    )
    if cfg.get("compile"):
        overlap_compiled_ddp(trainer.strategy)
    data = datamodule.config
    world = trainer.world_size
    micro, trainer.accumulate_grad_batches = data.device_batch(world)
    datamodule.micro_batch_size = micro
    log.info(
        "global batch %d = %d per device x %d devices x %d accumulation steps",
        data.batch_size,
        micro,
        world,
        trainer.accumulate_grad_batches,
    )
    return trainer


def overlap_compiled_ddp(strategy: L.pytorch.strategies.Strategy) -> None:
    """compile=true under DDP: keep the all-reduce overlapping the backward, and say so.

    s2s compiles the model inside the LightningModule (checkpoints keep plain `model.*` keys),
    not the DDP wrapper. That overlaps as well, given dynamo's DDPOptimizer: the first compile
    runs inside DDP's forward (Lightning calls training_step and validation_step through it),
    where dynamo finds the active DDP module and splits the graph at DDP's gradient buckets, so
    each bucket's all-reduce starts while the backward of earlier layers still runs (torch's
    `torch/_dynamo/backends/distributed.py`). With `torch._dynamo.config.optimize_ddp` off,
    one graph's backward ends before any all-reduce: this turns it back on.
    """
    if not isinstance(strategy, L.pytorch.strategies.DDPStrategy):
        return
    mode = torch._dynamo.config.optimize_ddp
    if mode in (False, "no_optimization"):
        mode = torch._dynamo.config.optimize_ddp = "ddp_optimizer"
    log.info(
        "compile=true under DDP: the model is compiled inside DDP's forward with "
        "torch._dynamo.config.optimize_ddp=%r, so DDP's all-reduce overlaps the backward",
        mode,
    )


def _fault_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The non-finite guard (`nonfinite`: stop | skip) and the SIGTERM / SIGINT handling that
    saves checkpoints/last.ckpt at the step reached (docs/reliability.md)."""
    guard = NonFiniteGuard(str(cfg.get("nonfinite") or "stop"))
    return [guard, Preemption(Path(cfg.paths.output_dir) / LAST_CHECKPOINT)]


def trainer_arguments(node: DictConfig) -> dict[str, Any]:
    """`cfg.trainer` as Trainer keyword arguments, checked where Lightning's own errors would
    not name the key: accumulation is derived (refused), `max_time` must be a duration."""
    values = OmegaConf.to_container(node, resolve=True)
    if not isinstance(values, dict):
        raise ValueError(f"trainer must be a mapping, got {values!r}")
    if "accumulate_grad_batches" in values:
        raise ValueError(
            "trainer.accumulate_grad_batches is derived from data.batch_size and "
            "data.micro_batch_size; set those instead"
        )
    if values.get("max_time") is not None:
        _check_duration(values["max_time"])
    values.pop("peak_tflops", None)  # s2s's (MFU), not Lightning's
    return values


def peak_tflops(node: DictConfig) -> float | None:
    """trainer.peak_tflops: the device peak MFU is measured against (None: s2s.throughput)."""
    value = node.get("peak_tflops")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"trainer.peak_tflops={value!r} must be a number > 0 (TFLOP/s) or null")
    return float(value)


def _check_duration(value: Any) -> None:
    """trainer.max_time must be what Lightning's Timer reads: DD:HH:MM:SS or {hours: 2, ...}
    (Lightning's own error for anything else does not name the key, or is a traceback)."""
    duration = None
    if isinstance(value, str) and (match := re.fullmatch(r"(\d+):(\d\d):(\d\d):(\d\d)", value)):
        days, hours, minutes, seconds = map(int, match.groups())
        duration = datetime.timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    elif isinstance(value, dict):
        with contextlib.suppress(TypeError):
            duration = datetime.timedelta(**value)
    if duration is None or duration.total_seconds() <= 0:
        raise ValueError(
            f"trainer.max_time={value!r} must be a positive duration: DD:HH:MM:SS "
            "(e.g. 00:02:30:00) or a mapping such as {hours: 2, minutes: 30}"
        )


def _keep_earlier_metrics(loggers: list[Any]) -> None:
    """Lightning's CSV logger deletes an existing metrics.csv (a resumed run in the same
    directory): move it aside to metrics-N.csv first."""
    for logger in loggers:
        if not isinstance(logger, CSVLogger):
            continue
        metrics = Path(logger.log_dir) / "metrics.csv"
        if metrics.is_file():
            n = 1
            while (kept := metrics.with_name(f"metrics-{n}.csv")).exists():
                n += 1
            metrics.rename(kept)
            log.info("kept the earlier %s as %s", metrics, kept.name)
