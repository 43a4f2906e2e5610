"""Dropout (Srivastava et al. 2014) whose CPU mask is cheap to draw: the twin of `nn.Dropout`.

Notation: inputs are any shape; outputs have the same shape and dtype.

Why: torch's CPU dropout draws one Bernoulli sample per element (`bernoulli_`, single-threaded),
a large share of a small model's CPU training step (benchmarks/README.md). Here each 64-bit
random word from the torch generator is cut into four uniform 16-bit integers u, and an
element is dropped when u falls in the lowest round(p * 2**16) of the 2**16 values: the drop
probability is p rounded to a multiple of 2**-16 (0.1 becomes 0.1000061; torch's float
uniforms are themselves only 24-bit). Kept elements are scaled by 1 / (1 - that
probability), so the expectation is unchanged, and the mask is applied as in torch
(`x * (keep * scale)` in x's dtype). Other devices keep torch's fused kernel. The masks differ
from torch's for the same seed, so a run with `s2s.kernels` installed and one without draw
different (equally distributed) dropout.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LEVELS = 2**16  # values of one 16-bit uniform


def drop_levels(p: float) -> int:
    """How many of the 2**16 values of u mean "drop": the quantised p is this / 2**16."""
    return min(round(p * _LEVELS), _LEVELS - 1)


def keep_mask(shape: torch.Size, p: float, *, device: torch.device) -> Tensor:
    """A bool tensor of `shape`, True (keep) with probability 1 - drop_levels(p) / 2**16.

    Draws from torch's default generator, as torch's dropout does (the trainer re-seeds it
    per batch for exact resume). No `generator=` argument: passing one, even None, stops
    torch.compile from tracing randint with dynamic shapes (torch 2.13).
    """
    n = math.prod(shape)
    # 64 random bits a word (the top value is missing from the range: a 2**-64 bias)
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=device)
    lanes = words.view(torch.int16)[:n].view(shape)  # uniform in [-2**15, 2**15)
    return lanes >= drop_levels(p) - 2**15


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Zero elements with probability p and scale the rest by 1 / (1 - p) when training."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)  # a fused kernel (CUDA, or Inductor's own RNG)
    keep = keep_mask(x.shape, p, device=x.device)
    return x * keep.to(x.dtype).mul_(keep_scale(p))


def keep_scale(p: float) -> float:
    """1 / (1 - quantised p): what kept elements are multiplied by."""
    return _LEVELS / (_LEVELS - drop_levels(p))


def dropout_into(x: Tensor, p: float, linear: Callable[[Tensor], Tensor], training: bool) -> Tensor:
    """`linear(dropout(x, p))` for a map without a bias term (linear(c x) = c linear(x)).

    On CPU the scale 1 / (1 - p) is applied to linear's output, not to x: the dropped entries
    of x are zeroed with `torch.where` on the bool mask, which autograd saves instead of a
    float mask. Worth it where x is much wider than the output: attention probabilities
    (B, H, T, S) before P V (B, H, T, Dh) (measured in benchmarks/README.md; the
    feed-forward's (B, T, F) before `wo` gained nothing, so it keeps `Dropout`).
    """
    if not training or p == 0.0:
        return linear(x)
    if x.device.type != "cpu":
        return linear(F.dropout(x, p, training=True))
    keep = keep_mask(x.shape, p, device=x.device)
    return linear(torch.where(keep, x, 0.0)) * keep_scale(p)


class Dropout(nn.Dropout):
    """`nn.Dropout` drawing its CPU mask with `dropout`; a no-op in eval mode or when p is 0."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability {p} must be in [0, 1)")
        super().__init__(p)

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)
