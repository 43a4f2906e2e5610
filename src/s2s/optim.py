"""Optimiser and learning-rate schedules (built from `conf/optimizer/` and `conf/scheduler/`).

Hydra instantiates these with `_partial_: true`; the LightningModule calls the partials with the
model (optimiser) and the optimiser (schedule).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn

from s2s.distributed import Shards, shards_of
from s2s.model.positions import LearnedPositions, RelativePositionBias

ScheduleKind = Literal["cosine", "linear", "inverse_sqrt", "constant"]


def adamw(
    model: nn.Module,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.98),
    eps: float = 1e-8,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay (Loshchilov & Hutter 2019) on matrices only.

    Norm gains, biases and embeddings (incl. position tables) are not decayed: decay pulls
    them towards 0, which for a gain means "switch the layer off", not "simpler model".
    Under FSDP, pass the root unit (Lightning's `trainer.model`): see `param_groups`.
    """
    groups = param_groups(model, lr, weight_decay)
    decay, no_decay = groups[0]["params"], groups[1]["params"]
    if fused is None:
        # torch's fused kernel: one pass over all tensors, much faster than the default
        # per-tensor loop on CPU (benchmarks/README.md)
        fused = all(
            p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in decay + no_decay
        )
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused)


def param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """[matrices (decayed), everything else (not decayed)], after checking lr and decay.

    A matrix by its whole shape: FSDP (use_orig_params=True) holds every parameter as a 1-D
    shard, so the shapes come from its units (`s2s.distributed.shards_of`)."""
    if lr <= 0:
        raise ValueError(f"optimizer.lr={lr} must be > 0")
    if weight_decay < 0:
        raise ValueError(f"optimizer.weight_decay={weight_decay} must be >= 0")
    decay, no_decay = [], []
    tables = (nn.Embedding, LearnedPositions, RelativePositionBias)  # looked up, not multiplied
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, tables)}
    shards = shards_of(model)
    for param in model.parameters():
        if not param.requires_grad:
            continue
        ndim = len(shards.shape(param)) if shards else param.ndim
        if ndim < 2 or id(param) in embeddings:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def adamw_scale(
    model: nn.Module,
    lr: float = 2e-2,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    min_scale: float = 1e-3,
) -> AdamWScale:
    """`AdamWScale` with `adamw`'s parameter groups (nanoT5's `adamwscale` recipe)."""
    groups = param_groups(model, lr, weight_decay)
    return AdamWScale(
        groups, lr=lr, betas=tuple(betas), eps=eps, min_scale=min_scale, shards=shards_of(model)
    )


class AdamWScale(torch.optim.Optimizer):
    """AdamW whose step on each tensor is multiplied by that tensor's root-mean-square.

    Adafactor's "relative step size" (Shazeer & Stern 2018, Sec. 8): a step of lr * RMS(W)
    changes every tensor by the same fraction of its own scale, whatever its shape or init, so
    one large learning rate (2e-2 in nanoT5's T5 pre-training, Nawrot 2023) suits them all.
    RMS(W) is floored at `min_scale` so tensors that start at zero can move. Weight decay is
    decoupled (Loshchilov & Hutter 2019), as in AdamW. Under FSDP (`shards`), RMS(W) is over
    the whole tensor, not this rank's piece: one all-reduce a step, and the same step as on
    one device.
    """

    def __init__(
        self,
        params,
        lr=2e-2,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.0,
        min_scale=1e-3,
        shards: Shards | None = None,
    ) -> None:
        if min_scale <= 0:
            raise ValueError(f"optimizer.min_scale={min_scale} must be > 0")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults | {"min_scale": min_scale})
        self.shards = shards

    @torch.no_grad()
    def _rms(self) -> list[torch.Tensor]:
        """RMS of every parameter of every group (in order), over the whole tensor."""
        params = [p for group in self.param_groups for p in group["params"]]
        squares = torch.stack([p.float().pow(2).sum() for p in params])  # (n_params,)
        if self.shards is not None:  # every rank, same order: the sums over all pieces
            dist.all_reduce(squares, group=self.shards.group)
        numel = self.shards.numel if self.shards is not None else torch.Tensor.numel
        return [(s / max(numel(p), 1)).sqrt() for s, p in zip(squares, params, strict=True)]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rms = iter(self._rms())
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                param_rms = next(rms)
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(param, dtype=torch.float32)
                state["step"] += 1
                grad = param.grad.float()
                state["exp_avg"].lerp_(grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                corrected = state["exp_avg"] / (1 - beta1 ** state["step"])
                denom = (state["exp_avg_sq"] / (1 - beta2 ** state["step"])).sqrt_()
                update = corrected / denom.add_(group["eps"])
                scale = param_rms.clamp_min(group["min_scale"])
                if group["weight_decay"]:
                    param.mul_(1 - group["lr"] * group["weight_decay"])
                param.add_((update * (-group["lr"] * scale)).to(param.dtype))
        return loss


def lr_factor(
    step: int, *, kind: ScheduleKind, warmup_steps: int, total_steps: int, min_ratio: float
) -> float:
    """Multiplier of the peak learning rate at optimiser step `step` (0-based).

    Linear warm-up over `warmup_steps`, then: cosine or linear decay to `min_ratio` at
    `total_steps`; inverse square root (Vaswani et al. 2017, Sec. 5.3); or constant.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    if kind == "inverse_sqrt":
        return math.sqrt(max(warmup_steps, 1) / (step + 1))
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if kind == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        shape = 1.0 - progress
    return min_ratio + (1.0 - min_ratio) * shape


def warmup_schedule(
    optimizer: torch.optim.Optimizer,
    *,
    kind: ScheduleKind = "cosine",
    warmup_steps: int = 100,
    total_steps: int = 1000,
    min_ratio: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR following `lr_factor`."""
    if kind not in ("cosine", "linear", "inverse_sqrt", "constant"):
        raise ValueError(
            f"scheduler.kind={kind!r} must be one of cosine, linear, inverse_sqrt, constant"
        )
    if warmup_steps < 0:
        raise ValueError(f"scheduler.warmup_steps={warmup_steps} must be >= 0")
    if kind in ("cosine", "linear") and total_steps <= 0:
        raise ValueError(
            f"scheduler.total_steps={total_steps} must be > 0 for a {kind} schedule "
            "(it follows trainer.max_steps; set trainer.max_steps)"
        )
    if not 0 <= min_ratio <= 1:
        raise ValueError(f"scheduler.min_ratio={min_ratio} must be in [0, 1]")

    def factor(step: int) -> float:
        return lr_factor(
            step, kind=kind, warmup_steps=warmup_steps, total_steps=total_steps, min_ratio=min_ratio
        )

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
