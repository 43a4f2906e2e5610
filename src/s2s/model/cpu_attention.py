"""Attention for float32 training on CPU: the math of `attend` with a hand-written backward.

Notation: B batch, H heads, T queries, S keys, Dh head dim.

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
only P, the bool keep mask, Q, K, V and O are kept for the backward. `attend` uses this on
CPU when autograd records a float32 attention; the result and gradients equal the math path
(tests/test_attention.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from s2s.model.dropout import keep_mask, keep_scale


def masked_scores(
    q: Tensor, k: Tensor, bias: Tensor | None, allowed: Tensor | None, scale: float
) -> Tensor:
    """scale * Q K^T + bias, with entries not `allowed` at the dtype's minimum: (B, H, T, S).

    The edits are in place on the matmul's fresh output (its backward needs q and k, not
    the output), so no second (B, H, T, S) tensor is made. Shared with `attend`'s math path.
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
