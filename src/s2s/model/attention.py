"""Multi-head attention (self and cross) and the one place masks are applied.

Notation: B batch, T query length, S key length, D model dim, H heads, Dh head dim.

MASK CONVENTION (the only one in this project): masks are bool and True means "may attend".
A padding mask is (B, L) with True (or 1) at real tokens. `build_mask` turns padding, the
causal constraint and an additive position bias into what the kernel wants, once per stack;
`attend` consumes it with either torch's fused `scaled_dot_product_attention` ("sdpa") or the
explicit softmax(QK^T)V reference ("math"). Both give the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s2s.model.cache import LayerCache
from s2s.model.cpu_attention import CpuAttention, masked_scores
from s2s.model.dropout import dropout_into
from s2s.model.linear import Linear
from s2s.model.positions import RotaryAngles


@dataclass(frozen=True)
class AttentionMask:
    """What the kernel needs: an optional mask tensor and whether to apply causality itself.

    `tensor` is None, a bool mask broadcastable to (B, H, T, S) (True = may attend), or a
    float additive bias of that shape with masked entries at the dtype's minimum.
    `is_causal` is only set when there is no tensor and T == S, so SDPA can skip the mask.
    """

    tensor: Tensor | None = None
    is_causal: bool = False


def causal_mask(q_len: int, k_len: int, device: torch.device | None) -> Tensor:
    """(1, 1, T, S) bool: query i, at position S - T + i, may attend keys 0 .. S - T + i."""
    tril = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)
    return tril[None, None]


def build_mask(
    padding_mask: Tensor | None,
    *,
    q_len: int,
    k_len: int,
    causal: bool,
    bias: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
) -> AttentionMask:
    """Combine a key padding mask (B, S), causality and an additive bias (1|B, H, T, S).

    With causality and T < S (cached decoding), query i sits at position S - T + i and may
    attend keys 0 .. S - T + i.
    """
    allowed = None
    if padding_mask is not None:
        padding_mask = padding_mask.bool()
        if padding_mask.shape[-1] != k_len:
            raise ValueError(f"padding mask covers {padding_mask.shape[-1]} keys, expected {k_len}")
        # An all-real batch needs no mask, which lets SDPA use is_causal or no mask at all.
        # (Skipped under torch.compile, where the data-dependent branch would break the graph.)
        if torch.compiler.is_compiling() or not bool(padding_mask.all()):
            allowed = padding_mask[:, None, None, :]  # (B, 1, 1, S)
    if causal and q_len > 1:
        if allowed is None and bias is None and q_len == k_len:
            return AttentionMask(is_causal=True)
        tril = causal_mask(q_len, k_len, device)
        allowed = tril if allowed is None else allowed & tril
    if bias is None:
        return AttentionMask(tensor=allowed)
    if bias.dtype != dtype:
        bias = bias.to(dtype)
    if allowed is None:
        return AttentionMask(tensor=bias)
    # masked_fill (not adding -inf) keeps rows finite and never overflows.
    return AttentionMask(tensor=bias.masked_fill(~allowed, torch.finfo(dtype).min))


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
    """Scaled dot-product attention: q (B, H, T, Dh), k and v (B, H, S, Dh) -> (B, H, T, Dh).

    "sdpa" calls torch's fused kernel where it has one for these inputs; otherwise, when
    autograd records a float32 CPU attention, `CpuAttention` (this math with an in-place
    backward); otherwise the math below. The math beats SDPA's own unfused fallback (1.7x
    on T5-small's encoder attention under bf16 autocast on a 2-core EPYC; the fallback also
    scales q and k apart and checks for fully masked rows) and draws its dropout mask with
    `s2s.model.dropout`. "math" always runs the math below, the readable reference.
    """
    if backend == "sdpa" and sdpa_is_fused(q, mask, dropout):
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask.tensor, dropout_p=dropout, is_causal=mask.is_causal, scale=scale
        )
    bias, allowed = _bias_and_allowed(mask, q.shape[-2], k.shape[-2], q.device)
    if backend == "sdpa" and _float32_cpu_training(q, k, v):
        return CpuAttention.apply(q, k, v, bias, allowed, scale, dropout)
    scores = masked_scores(q, k, bias, allowed, scale)  # (B, H, T, S)
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    # dropout(P) V, with the scale applied to the (B, H, T, Dh) output rather than the S-wide
    # P on CPU (a T5-small encoder layer's P is 33 MB in float32, its bool mask 8 MB)
    return dropout_into(probs, dropout, lambda p: torch.matmul(p, v), training=dropout > 0.0)


def _float32_cpu_training(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether autograd records a float32 attention on CPU (`s2s.model.cpu_attention`).

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
    """The mask as (float additive bias, bool "may attend"), either None."""
    if mask.is_causal:
        return None, causal_mask(q_len, k_len, device)
    if mask.tensor is not None and mask.tensor.dtype == torch.bool:
        return None, mask.tensor
    return mask.tensor, None


def sdpa_is_fused(q: Tensor, mask: AttentionMask, dropout: float) -> bool:
    """Whether `F.scaled_dot_product_attention` runs a fused kernel rather than its math.

    On CPU (checked with torch 2.13) the fused (flash) kernel takes no dropout and no mask
    that needs a gradient, such as T5's learned relative bias in training. CUDA's
    memory-efficient kernel takes both.
    """
    if q.device.type != "cpu":
        return True
    bias_needs_grad = mask.tensor is not None and mask.tensor.requires_grad
    return dropout == 0.0 and not bias_needs_grad


def _split_heads(x: Tensor, n_parts: int, n_heads: int) -> list[Tensor]:
    """(B, L, n_parts * H * Dh) -> n_parts tensors of shape (B, H, L, Dh), as views."""
    b, length, _ = x.shape
    x = x.view(b, length, n_parts, n_heads, -1)  # (B, L, n_parts, H, Dh)
    x = x.permute(2, 0, 3, 1, 4)  # (n_parts, B, H, L, Dh)
    return list(x.unbind(0))


def _merge_heads(x: Tensor) -> Tensor:
    """(B, H, T, Dh) -> (B, T, H * Dh)."""
    b, h, t, dh = x.shape
    return x.transpose(1, 2).reshape(b, t, h * dh)  # (B, T, H * Dh)


class SelfAttention(nn.Module):
    """Self-attention with one fused q/k/v projection D -> 3 * H * Dh."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_head: int,
        *,
        bias: bool,
        scale: bool,
        dropout: float,
        backend: str,
    ) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.scale = d_head**-0.5 if scale else 1.0
        self.dropout = dropout
        self.backend = backend
        self.qkv = Linear(d_model, 3 * n_heads * d_head, bias=bias)
        self.out = Linear(n_heads * d_head, d_model, bias=bias)

    def forward(
        self,
        x: Tensor,
        mask: AttentionMask,
        *,
        rotary: RotaryAngles | None = None,
        cache: LayerCache | None = None,
    ) -> Tensor:
        """x (B, T, D) -> (B, T, D). With a cache, new keys/values are appended to it."""
        q, k, v = _split_heads(self.qkv(x), 3, self.n_heads)  # each (B, H, T, Dh)
        if rotary is not None:
            q, k = rotary.rotate(q), rotary.rotate(k)
        if cache is not None:
            k, v = cache.append_self(k, v)  # (B, H, S, Dh) with S = past + T
        dropout = self.dropout if self.training else 0.0
        y = attend(q, k, v, mask, scale=self.scale, dropout=dropout, backend=self.backend)
        return self.out(_merge_heads(y))


class CrossAttention(nn.Module):
    """Decoder-to-encoder attention: q from D -> H * Dh, fused k/v from D -> 2 * H * Dh."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_head: int,
        *,
        bias: bool,
        scale: bool,
        dropout: float,
        backend: str,
    ) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.scale = d_head**-0.5 if scale else 1.0
        self.dropout = dropout
        self.backend = backend
        self.q = Linear(d_model, n_heads * d_head, bias=bias)
        self.kv = Linear(d_model, 2 * n_heads * d_head, bias=bias)
        self.out = Linear(n_heads * d_head, d_model, bias=bias)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        mask: AttentionMask,
        *,
        cache: LayerCache | None = None,
        rotary: RotaryAngles | None = None,
        memory_rotary: RotaryAngles | None = None,
    ) -> Tensor:
        """x (B, T, D) attends memory (B, S, D). Keys/values are computed once per cache.

        With `rotary` (the T target positions) and `memory_rotary` (the S source positions),
        q and k are rotated like self-attention's, so q.k depends on target - source position
        (`ModelConfig.rotary_cross_attention`); cached keys are stored rotated.
        """
        (q,) = _split_heads(self.q(x), 1, self.n_heads)  # (B, H, T, Dh)
        if rotary is not None:
            q = rotary.rotate(q)
        if cache is not None and cache.cross_k is not None:
            k, v = cache.cross_k, cache.cross_v
        else:
            k, v = _split_heads(self.kv(memory), 2, self.n_heads)  # each (B, H, S, Dh)
            if memory_rotary is not None:
                k = memory_rotary.rotate(k)
            if cache is not None:
                cache.cross_k, cache.cross_v = k.contiguous(), v.contiguous()
        dropout = self.dropout if self.training else 0.0
        y = attend(q, k, v, mask, scale=self.scale, dropout=dropout, backend=self.backend)
        return self.out(_merge_heads(y))
