"""Normalisation layers: LayerNorm and RMSNorm, both computed in float32.

Notation: D model dim; inputs are (..., D) and outputs have the same shape and dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LayerNorm(nn.Module):
    """y = (x - mean) / sqrt(var + eps) * weight + bias (Ba et al. 2016).

    Statistics use the biased variance over the last dim, in float32 for half inputs.
    """

    def __init__(self, d_model: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        mean = h.mean(-1, keepdim=True)
        var = (h - mean).pow(2).mean(-1, keepdim=True)
        h = (h - mean) * torch.rsqrt(var + self.eps)
        return h.to(x.dtype) * self.weight + self.bias


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight (Zhang & Sennrich 2019; T5's "layer norm").

    No mean subtraction and no bias; the mean square is taken in float32, as T5 does.
    """

    def __init__(self, d_model: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return h.to(x.dtype) * self.weight


def make_norm(kind: str, d_model: int, eps: float) -> nn.Module:
    """Build the norm named by `ModelConfig.norm`."""
    if kind == "layernorm":
        return LayerNorm(d_model, eps)
    if kind == "rmsnorm":
        return RMSNorm(d_model, eps)
    raise ValueError(f"unknown norm {kind!r}; expected 'layernorm' or 'rmsnorm'")
