"""Normalisation layers: LayerNorm and RMSNorm, both computed in float32.

Notation: D model dim; inputs are (..., D) and outputs have the same shape and dtype.

RMSNorm runs at every sublayer, where a decoding step is mostly per-op overhead at small
sizes, so its math is written in cheap ops: sum then divide (`mean` adds a dtype round trip;
torch's `rms_norm` on CPU is that same composite plus casts), bit-identical and about twice
as fast (benchmarks/README.md). LayerNorm without autograd on float32 inputs calls torch's
fused kernel (one op instead of ten, equal up to float rounding); with autograd it keeps the
math.

On any other device (CUDA, ...) both norms call torch's fused kernels, `F.layer_norm` and
`F.rms_norm`: one kernel that keeps only the input and the per-row statistics for backward,
instead of the float32 intermediates of the math (whose per-row statistics they compute in
float32 for half inputs, as T5 does; CUDA autocast runs both in float32). `fused_layer_norm`
and `fused_rms_norm` are that branch, tested equal to the math here on the CPU
(tests/test_norms.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _fused(x: Tensor) -> bool:
    """Whether to call torch's fused kernel: float32 input, nothing for autograd."""
    return x.dtype == torch.float32 and not torch.is_grad_enabled()


def fused_layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """LayerNorm by torch's kernel, in the dtype the math would return (x's and the weight's
    promoted: float32 for half x with a float32 weight). (..., D) -> (..., D)."""
    dtype = torch.promote_types(x.dtype, weight.dtype)
    return F.layer_norm(x.to(dtype), weight.shape, weight.to(dtype), bias.to(dtype), eps)


def fused_rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm by torch's kernel (the mean square in float32 for half x), in the dtype the
    math would return. (..., D) -> (..., D)."""
    dtype = torch.promote_types(x.dtype, weight.dtype)
    return F.rms_norm(x.to(dtype), weight.shape, weight.to(dtype), eps)


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
        if x.device.type != "cpu" or _fused(x):
            return fused_layer_norm(x, self.weight, self.bias, self.eps)
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
        if x.device.type != "cpu":
            return fused_rms_norm(x, self.weight, self.eps)
        h = x.float() if x.dtype != torch.float32 else x  # (even a no-op call costs time)
        mean_square = torch.sum(h * h, dim=-1, keepdim=True).div_(h.shape[-1])  # (..., 1)
        h = h * mean_square.add_(self.eps).rsqrt_()
        return (h.to(x.dtype) if x.dtype != torch.float32 else h) * self.weight


def make_norm(kind: str, d_model: int, eps: float) -> nn.Module:
    """Build the norm named by `ModelConfig.norm`."""
    if kind == "layernorm":
        return LayerNorm(d_model, eps)
    if kind == "rmsnorm":
        return RMSNorm(d_model, eps)
    raise ValueError(f"unknown norm {kind!r}; expected 'layernorm' or 'rmsnorm'")
