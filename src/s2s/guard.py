"""Stop a run whose loss or gradient norm goes non-finite before it saves the wreck.

A diverging run (too high a learning rate, an fp16/bf16 overflow) turns the weights into NaN
within a step or two; training on would overwrite last.ckpt and best-*.ckpt with them. This
callback logs `train/grad_norm` (the L2 norm of all gradients before clipping: what one looks
at when a run diverges) and stops the run with `NonFiniteError`, one line naming the first
optimiser step whose loss or gradient norm was non-finite, and no checkpoint is written after
that step (`on_save_checkpoint` refuses first; it also refuses weights that are not finite).

No host-device synchronisation per step: the check runs on the device (a few element-wise ops
that record the first bad step in a 3-element tensor) and its result is read only where the host
waits for the device anyway: at logging steps (every trainer.log_every_n_steps, where Lightning
turns the logged values into numbers), before every checkpoint save, before validation and at
the end. A run therefore stops up to log_every_n_steps steps after the first non-finite one,
saying which one it was, never having saved anything after it.

`nonfinite=skip` instead skips such steps (no weight or optimiser update, as fp16 loss scaling
does): deciding before the update needs the host, so that mode reads the flag every step (one
synchronisation per step; the mode is opt-in). Under fp16 loss scaling (precision=16-mixed) a
non-finite gradient is the scaler's to skip, and only the loss is checked.

Notation: step N is the N-th optimiser step (trainer.global_step is N after it).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import Tensor

from s2s.distributed import fsdp_root

log = logging.getLogger(__name__)
MODES = ("stop", "skip")
NONE = -1.0  # the step slot of `first` before any non-finite step


class NonFiniteError(ValueError):
    """The loss or gradient norm became NaN or infinite (the run stopped before saving it)."""


class NonFiniteGuard(L.Callback):
    def __init__(self, mode: str = "stop") -> None:
        if mode not in MODES:
            raise ValueError(f"nonfinite={mode!r} must be one of {', '.join(MODES)}")
        self.mode = mode
        self.skipped = 0  # steps skipped (mode "skip")
        self._loss: Tensor | None = None  # this step's first non-finite micro-batch loss, if any
        self._first: Tensor | None = None  # (3,) float64: step, loss, grad norm of the first bad
        self._read_at = -1  # the global step the flag was last read at

    def on_before_backward(self, trainer: L.Trainer, pl_module: Any, loss: Tensor) -> None:
        loss = loss.detach().float().reshape(())
        if self._loss is None:
            self._loss = loss
        else:  # keep the first non-finite loss of the accumulated micro-batches
            self._loss = torch.where(torch.isfinite(self._loss), loss, self._loss)

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: Any, optimizer: torch.optim.Optimizer
    ) -> None:
        norm = grad_norm(optimizer, sharded=fsdp_root(trainer.model) is not None)
        pl_module.log("train/grad_norm", norm)
        loss = self._loss if self._loss is not None else torch.zeros_like(norm)
        self._loss = None
        bad = ~torch.isfinite(loss)
        if getattr(trainer.precision_plugin, "scaler", None) is None:
            bad |= ~torch.isfinite(norm)
        if self.mode == "skip":
            self._skip(trainer, optimizer, bool(bad))  # the opt-in synchronisation
            return
        now = torch.stack([torch.full_like(norm, trainer.global_step + 1), loss, norm]).double()
        if self._first is None:
            self._first = torch.full_like(now, NONE)
        self._first.copy_(torch.where(bad & (self._first[0] == NONE), now, self._first))

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        step = trainer.global_step
        if step != self._read_at and step % max(trainer.log_every_n_steps, 1) == 0:
            self._read_at = step
            self.check(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self.check(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: Any, checkpoint: Any) -> None:
        self.check(trainer, checkpoint.get("state_dict", {}))

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.check(trainer)

    def check(self, trainer: L.Trainer, weights: dict[str, Any] | None = None) -> None:
        """Raise NonFiniteError if any rank has seen a non-finite step, or holds non-finite
        `weights` (those about to be saved; a finite step can still overflow them). Every
        rank must call it: the decision is theirs together."""
        first = self._first.tolist() if self._first is not None else [NONE, 0.0, 0.0]
        broken = weights is not None and not all_finite(weights.values())
        if not trainer.strategy.reduce_boolean_decision(first[0] != NONE or broken, all=False):
            return
        if first[0] == NONE and broken:
            raise NonFiniteError(
                f"step {trainer.global_step}: the weights are no longer finite (the loss and "
                "gradient norm were): stopped before saving them (lower optimizer.lr)"
            )
        if first[0] == NONE:
            raise NonFiniteError(
                f"step {trainer.global_step}: another rank's loss or gradient norm is not "
                "finite: stopped before saving it"
            )
        step, loss, norm = first
        raise NonFiniteError(
            f"step {int(step)}: the loss is {loss:g} and the gradient norm {norm:g}: stopped; "
            f"no checkpoint was saved after step {int(step) - 1} (lower optimizer.lr, keep "
            "trainer.gradient_clip_val, warm up longer, or nonfinite=skip to skip such steps)"
        )

    def _skip(self, trainer: L.Trainer, optimizer: torch.optim.Optimizer, bad: bool) -> None:
        """Drop this step's gradients on every rank when any rank's step is non-finite:
        torch optimisers leave parameters without a gradient untouched (no update, no weight
        decay, no moment change); the schedule still advances, as under fp16 loss scaling."""
        if not trainer.strategy.reduce_boolean_decision(bad, all=False):
            return
        for group in optimizer.param_groups:
            for param in group["params"]:
                param.grad = None
        self.skipped += 1
        log.warning(
            "step %d: non-finite loss or gradient norm: step skipped (%d so far, nonfinite=skip)",
            trainer.global_step + 1,
            self.skipped,
        )


def all_finite(tensors: Any) -> bool:
    """Whether every floating-point tensor among `tensors` is free of NaN and infinity."""
    floats = [t for t in tensors if isinstance(t, Tensor) and t.is_floating_point()]
    return not floats or bool(torch.stack([torch.isfinite(t).all() for t in floats]).all())


def grad_norm(optimizer: torch.optim.Optimizer, sharded: bool = False) -> Tensor:
    """The L2 norm of all gradients `optimizer` steps (a 0-d tensor; 0 when there are none).
    `sharded`: each rank holds a disjoint piece (FSDP), so the squares are summed over ranks."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0).float()
    else:  # a rank may hold no gradient at all, and must still take part in the sum
        norm = torch.zeros((), device=params[0].device)
    if sharded and dist.is_initialized():
        squares = norm.square()
        dist.all_reduce(squares)
        norm = squares.sqrt()
    return norm
