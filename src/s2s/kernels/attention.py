"""Attention on CPU: `s2s.model.attention.attend` with fewer (B, H, T, S) tensors.

Notation: B batch, H heads, T queries, S keys, Dh head dim.

`attend` below is the twin of the model's: where torch's SDPA has a fused CPU kernel for the
inputs it calls it; otherwise (dropout, or a bias that needs a gradient), for float32 training,
`CpuAttention` (the math with an in-place backward, below), else the math with the scores
edited in place and the dropout scale applied to the (B, H, T, Dh) output
(`s2s.kernels.dropout.dropout_into`). Why: torch's own unfused fallback is slower than that
math (benchmarks/README.md). `SelfAttentionKernel` and `CrossAttentionKernel` are the model's
attention modules routed through it (`s2s.kernels.install`).

The float32 training path:

    scores = scale * Q K^T + bias (masked entries at the dtype's minimum)
    P      = softmax(scores)                       (B, H, T, S)
    O      = (keep * P) V / (1 - p)                keep: the dropout mask, all True at p = 0

Autograd would allocate a fresh (B, H, T, S) tensor for every step of that chain's backward
(the gradient of P V, of the dropout, of the softmax, of the scale), and on CPU each fresh
tensor of that size also costs page faults (a T5-small encoder layer's P is 33 MB). The
backward below works in ONE such buffer, in place, using FlashAttention's identity for the
softmax gradient (Dao et al. 2022, "FlashAttention", Appendix B.2):

    dS = P * (dP - D),   D_i = sum_j P_ij dP_ij = dO_i . O_i      (B, H, T, 1)

where dP = dL/dP. The forward also works in place (the softmax overwrites the scores), and
only P, the bool keep mask, Q, K, V and O are kept for the backward. The result and gradients
equal the math path (tests/test_kernels.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from s2s.kernels.dropout import dropout_into, keep_mask, keep_scale
from s2s.model.attention import (
    AttentionMask,
    CrossAttention,
    SelfAttention,
    causal_mask,
    merge_heads,
    sdpa,
)


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: AttentionMask,
    *,
    scale: float,
    dropout: float,
    backend: str,
) -> Tensor:
    """`s2s.model.attention.attend` (same arguments, same function), faster on CPU.

    "sdpa": torch's kernel where it is fused for these inputs, else `CpuAttention` when
    autograd records a float32 CPU attention, else the math below. "math": the math below.
    """
    if backend == "sdpa" and sdpa_is_fused(q, mask, dropout):
        return sdpa(q, k, v, mask, scale=scale, dropout=dropout)
    bias, allowed = _bias_and_allowed(mask, q.shape[-2], k.shape[-2], q.device)
    if backend == "sdpa" and _float32_cpu_training(q, k, v):
        return CpuAttention.apply(q, k, v, bias, allowed, scale, dropout)
    scores = masked_scores(q, k, bias, allowed, scale)  # (B, H, T, S)
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    # dropout(P) V, scaled on the (B, H, T, Dh) output rather than the S-wide P
    return dropout_into(probs, dropout, lambda p: torch.matmul(p, v), training=dropout > 0.0)


def sdpa_is_fused(q: Tensor, mask: AttentionMask, dropout: float) -> bool:
    """Whether `F.scaled_dot_product_attention` runs a fused kernel rather than its math.

    On CPU (checked with torch 2.13) the fused (flash) kernel takes no dropout and no mask
    that needs a gradient, such as T5's learned relative bias in training. CUDA's
    memory-efficient kernel takes both (and a bias with padding through `with_key_padding`).
    """
    if q.device.type != "cpu":
        return True
    bias_needs_grad = mask.tensor is not None and mask.tensor.requires_grad
    # a bias beside key padding would need a combined (B, H, T, S) mask or widened q, k and v
    # for it (`s2s.model.attention.sdpa`); `masked_scores` applies both to the scores it
    # computes anyway
    return dropout == 0.0 and not bias_needs_grad and mask.padding is None


def _float32_cpu_training(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether autograd records a float32 attention on CPU (`CpuAttention`).

    Not under autocast: its matmuls would run in bf16 inside the function (and rotary q, k
    stay float32 while v is bf16)."""
    return (
        q.device.type == "cpu"
        and q.dtype == k.dtype == v.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and torch.is_grad_enabled()
        and (q.requires_grad or k.requires_grad or v.requires_grad)
    )


def _bias_and_allowed(
    mask: AttentionMask, q_len: int, k_len: int, device: torch.device
) -> tuple[Tensor | None, Tensor | None]:
    """The mask as (float additive bias (1, H, T, S), bool "may attend"), either None."""
    if mask.is_causal:
        return None, causal_mask(q_len, k_len, device)
    if mask.tensor is not None and mask.tensor.dtype == torch.bool:
        return None, mask.tensor
    return mask.tensor, mask.padding


def masked_scores(
    q: Tensor, k: Tensor, bias: Tensor | None, allowed: Tensor | None, scale: float
) -> Tensor:
    """scale * Q K^T + bias, with entries not `allowed` at the dtype's minimum: (B, H, T, S).

    The edits are in place on the matmul's fresh output (its backward needs q and k, not
    the output), so no second (B, H, T, S) tensor is made.
    """
    scores = torch.matmul(q, k.transpose(-2, -1))
    if scale != 1.0:
        scores.mul_(scale)
    if bias is not None:
        scores.add_(bias)
    if allowed is not None:
        # masked_fill (not adding -inf) keeps rows finite and never overflows
        scores.masked_fill_(~allowed, torch.finfo(scores.dtype).min)
    return scores


class CpuAttention(torch.autograd.Function):
    """O = dropout(softmax(scale * Q K^T + bias)) V with the in-place backward above."""

    @staticmethod
    def forward(
        ctx,
        q: Tensor,  # (B, H, T, Dh)
        k: Tensor,  # (B, H, S, Dh)
        v: Tensor,  # (B, H, S, Dh)
        bias: Tensor | None,  # float, broadcastable to (B, H, T, S), masked entries at min
        allowed: Tensor | None,  # bool, broadcastable to (B, H, T, S), True = may attend
        scale: float,
        dropout: float,
    ) -> Tensor:
        scores = masked_scores(q, k, bias, allowed, scale)  # (B, H, T, S)
        probs = torch.softmax(scores, dim=-1, out=scores)  # in place: the scores are spent
        keep = None
        if dropout > 0.0:
            keep = keep_mask(probs.shape, dropout, device=probs.device)
            out = torch.matmul(torch.where(keep, probs, 0.0), v).mul_(keep_scale(dropout))
        else:
            out = torch.matmul(probs, v)  # (B, H, T, Dh)
        ctx.save_for_backward(q, k, v, probs, keep, out, allowed)
        ctx.scale, ctx.dropout = scale, dropout
        ctx.bias_shape = None if bias is None else bias.shape
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        q, k, v, probs, keep, out, allowed = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        rowdot = (grad_out * out).sum(-1, keepdim=True)  # D: (B, H, T, 1)
        if keep is not None:
            s = keep_scale(ctx.dropout)
            buffer = torch.where(keep, probs, 0.0)  # the dropped P, for dV
            grad_v = torch.matmul(buffer.transpose(-2, -1), grad_out).mul_(s)
            torch.matmul(grad_out, v.transpose(-2, -1), out=buffer)  # dP through the dropout
            buffer.masked_fill_(~keep, 0.0).mul_(s)
        else:
            grad_v = torch.matmul(probs.transpose(-2, -1), grad_out)
            buffer = torch.matmul(grad_out, v.transpose(-2, -1))  # dP
        buffer.sub_(rowdot).mul_(probs)  # dS, the gradient of the scores (bias included)
        if allowed is not None:
            # as the math path's masked_fill: no gradient through masked scores (only rows
            # with every key masked, whose P is uniform, have any there)
            buffer.masked_fill_(~allowed, 0.0)
        grad_bias = None
        if ctx.needs_input_grad[3]:
            grad_bias = _sum_to(buffer, ctx.bias_shape)
        if ctx.scale != 1.0:
            buffer.mul_(ctx.scale)
        grad_q = torch.matmul(buffer, k) if ctx.needs_input_grad[0] else None
        grad_k = torch.matmul(buffer.transpose(-2, -1), q) if ctx.needs_input_grad[1] else None
        return grad_q, grad_k, grad_v, grad_bias, None, None, None


def _sum_to(grad: Tensor, shape: torch.Size) -> Tensor:
    """Sum a (B, H, T, S) gradient to `shape`, the bias's shape before broadcasting."""
    lead = grad.dim() - len(shape)
    padded = (1,) * lead + tuple(shape)
    dims = [i for i, (g, b) in enumerate(zip(grad.shape, padded, strict=True)) if b == 1 and g != 1]
    summed = grad.sum(dim=dims, keepdim=True) if dims else grad.clone()
    return summed.reshape(shape)


class _KernelAttention:
    """The model's `attend_and_project` through this module's `attend`."""

    def attend_and_project(self, q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask) -> Tensor:
        dropout = self.dropout if self.training else 0.0
        y = attend(q, k, v, mask, scale=self.scale, dropout=dropout, backend=self.backend)
        return self.out(merge_heads(y))


class SelfAttentionKernel(_KernelAttention, SelfAttention):
    """`SelfAttention` with the CPU `attend`."""


class CrossAttentionKernel(_KernelAttention, CrossAttention):
    """`CrossAttention` with the CPU `attend`."""
