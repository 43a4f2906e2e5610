"""Dropout (Srivastava et al. 2014) whose CPU mask is cheap to draw.

Notation: inputs are any shape; outputs have the same shape and dtype.

torch's CPU dropout draws one Bernoulli sample per element (`bernoulli_`, single-threaded,
about 7 ns an element on a 2-core EPYC), which was a fifth of a T5-small training step on
that CPU. Here each 64-bit random word from the torch generator is cut into four uniform
16-bit integers u, and an element is dropped when u falls in the lowest round(p * 2**16)
of the 2**16 values: the drop probability is p rounded to a multiple of 2**-16 (0.1 becomes
0.1000061; torch's float uniforms are themselves only 24-bit). Kept elements are scaled by
1 / (1 - that probability), so the expectation is unchanged, and the mask is applied as in
torch (`x * (keep * scale)` in x's dtype). Under torch.compile on CPU this is also about twice
as fast as Inductor's own dropout. Other devices keep torch's fused kernel.
"""

from __future__ import annotations

import math

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
    scale = _LEVELS / (_LEVELS - drop_levels(p))  # 1 / (1 - quantised p)
    return x * keep_mask(x.shape, p, device=x.device).to(x.dtype).mul_(scale)


class Dropout(nn.Module):
    """`dropout` as a module; a no-op in eval mode or when p is 0."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability {p} must be in [0, 1)")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
