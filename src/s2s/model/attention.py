"""Multi-head attention (self and cross) and the one place masks are applied.

Notation: B batch, T query length, S key length, D model dim, H heads, Dh head dim.

MASK CONVENTION (the only one in this project): masks are bool and True means "may attend".
A padding mask is (B, L) with True (or 1) at real tokens; a caller whose batch has no padding
passes None (the training loop decides that on the host, before the batch moves to the device:
no host-device synchronisation here). `build_mask` turns padding, the causal constraint and an
additive position bias into what the kernel wants, once per stack; `attend` consumes it with
either torch's fused `scaled_dot_product_attention` ("sdpa") or the explicit softmax(QK^T)V
reference ("math"). Both give the same numbers. (`s2s.kernels` adds a faster CPU path for
training and decoding on top of these modules; nothing here depends on it.)

A T5 bias stays (1, H, T, S) in the compute dtype: key padding is kept beside it as a
(B, 1, 1, S) bool (`AttentionMask.padding`) rather than folded into a (B, H, T, S) bias. The
math path and `s2s.kernels` apply the two to the scores they compute anyway. torch's SDPA
takes one mask, so `sdpa` there carries the padding in the keys instead (`with_key_padding`):
no (B, H, T, S) tensor is made for it (docs/performance.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s2s.model.cache import LayerCache
from s2s.model.positions import RotaryAngles

ATTENTION_BACKENDS = ("sdpa", "math")


def check_backend(backend: str) -> str:
    """`backend` if it is one of ATTENTION_BACKENDS, else a ValueError naming the setting."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention_backend={backend!r} must be one of {list(ATTENTION_BACKENDS)}")
    return backend


# What a padded key's score loses on the SDPA path (`with_key_padding`), in units of the scaled
# score: exp(-16384) is 0 in float32, and real scores never come within 100 of it. A power of
# two, so -PENALTY is exact in bf16 and fp16 (whose largest finite value is 65504).
PADDING_PENALTY = 2.0**14


@dataclass(frozen=True)
class AttentionMask:
    """What the kernel needs: an optional mask tensor, key padding, and whether to apply
    causality itself.

    `tensor` is None, a bool mask broadcastable to (B, H, T, S) (True = may attend), or a float
    additive bias broadcastable to (1, H, T, S) with masked entries at its dtype's minimum.
    `padding` is None or, only beside a float `tensor`, the (B, 1, 1, S) bool key padding
    (True = real key) to apply on top of it. `is_causal` is only set when there is no tensor
    and T == S, so SDPA can skip the mask.
    """

    tensor: Tensor | None = None
    is_causal: bool = False
    padding: Tensor | None = None
    # what `with_key_padding` and `combined` make once per mask and every layer shares (a dict
    # rather than functools.cached_property, whose lock torch.compile cannot trace)
    _made: dict[str, Tensor] = field(default_factory=dict, compare=False, repr=False)

    def combined(self) -> Tensor | None:
        """`tensor` with `padding` folded in, (B, H, T, S): padded keys at the minimum. Only
        where it is small (cached decoding, T = 1); `sdpa` otherwise avoids it."""
        if self.padding is None:
            return self.tensor
        if "combined" not in self._made:
            fill = torch.finfo(self.tensor.dtype).min
            self._made["combined"] = self.tensor.masked_fill(~self.padding, fill)
        return self._made["combined"]

    def key_columns(self, width: int, scale: float, dtype: torch.dtype) -> Tensor:
        """The columns `with_key_padding` appends to the keys: (B, 1, S, width), column 0 at
        -sqrt(PADDING_PENALTY / scale) on padded keys and 0 on real ones, the rest 0."""
        key = f"keys {width} {scale} {dtype}"
        if key not in self._made:
            padded = ~self.padding[:, :, 0, :, None]  # (B, 1, S, 1)
            column = padded * -math.sqrt(PADDING_PENALTY / scale)
            rest = torch.zeros(*padded.shape[:-1], width - 1, device=padded.device)
            self._made[key] = torch.cat([column, rest], dim=-1).to(dtype)  # (B, 1, S, width)
        return self._made[key]


def widened_head_size(dh: int) -> int:
    """The head size `with_key_padding` gives q and k: at least one column more than Dh,
    rounded up to the multiple of 8 the fused kernels want (64 -> 72, 60 -> 64)."""
    return (dh // 8 + 1) * 8


def with_key_padding(
    q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask, scale: float, *, pad_values: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """q, k (and v if `pad_values`) with a few columns appended so that scale * q'.k' equals
    scale * q.k on real keys and that minus PADDING_PENALTY on padded ones: key padding carried
    by the keys themselves, so SDPA takes the (1, H, T, S) bias alone as its mask and nothing
    (B, H, T, S) is made for the padding.

    q gets a column of a = sqrt(PADDING_PENALTY / scale), k a column of -a on padded keys and 0
    on real ones; both are then padded with zeros to a multiple of 8 columns, the alignment
    the fused kernels want. CUDA's memory-efficient kernel takes values narrower than the
    keys; the CPU's flash kernel does not, so there v is widened with zeros too (its output
    columns are dropped by the caller). Cost: widened_head_size(Dh) / Dh of the q.k work and
    of q and k's memory (12.5% at Dh = 64), against B * H * T * S of mask
    (docs/performance.md).
    """
    b, h, t, dh = q.shape
    width = widened_head_size(dh) - dh  # the appended columns: >= 1
    keys = mask.key_columns(width, scale, k.dtype)  # (B, 1, S, width)
    query = torch.zeros(width, dtype=q.dtype, device=q.device)
    query[0] = math.sqrt(PADDING_PENALTY / scale)
    q = torch.cat([q, query.expand(b, h, t, width)], dim=-1)  # (B, H, T, Dh + width)
    k = torch.cat([k, keys.expand(-1, h, -1, -1)], dim=-1)  # (B, H, S, Dh + width)
    if pad_values:
        v = F.pad(v, (0, width))  # (B, H, S, Dh + width)
    return q, k, v


def sdpa(q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask, *, scale: float, dropout: float):
    """torch's `scaled_dot_product_attention` with an `AttentionMask`: q (B, H, T, Dh), k and v
    (B, H, S, Dh) -> (B, H, T, Dh).

    A bias with key padding goes in as the bias alone, the padding carried by the keys
    (`with_key_padding`), unless the combined (B, H, T, S) mask is no bigger than the widened
    copies of q and k that takes, T * S <= (T + S) * widened_head_size(Dh) (cached decoding:
    T = 1).
    """
    if mask.padding is None:
        attn_mask = mask.tensor
    elif q.shape[-2] * k.shape[-2] <= (q.shape[-2] + k.shape[-2]) * widened_head_size(q.shape[-1]):
        attn_mask = mask.combined()
    else:
        dh = v.shape[-1]
        q, k, v = with_key_padding(q, k, v, mask, scale, pad_values=q.device.type != "cuda")
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask.tensor, dropout_p=dropout, scale=scale
        )
        return out[..., :dh]  # (B, H, T, Dh)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=dropout, is_causal=mask.is_causal, scale=scale
    )


def causal_mask(q_len: int, k_len: int, device: torch.device | None) -> Tensor:
    """(1, 1, T, S) bool: query i, at position S - T + i, may attend keys 0 .. S - T + i."""
    tril = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)
    return tril[None, None]


def mask_dtype(x: Tensor) -> torch.dtype:
    """The dtype attention scores are computed in for activations `x`: autocast's when it is on
    for x's device (the bias is then made in it once, not cast in every layer), else x's."""
    kind = x.device.type  # the meta device has no autocast (and asking it raises)
    if torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype


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
    """Combine a key padding mask (B, S), causality and an additive bias (1, H, T, S).

    A given padding mask is always applied (pass None for a batch without padding: deciding
    that here would read the mask back from the device). With causality and T < S (cached
    decoding), query i sits at position S - T + i and may attend keys 0 .. S - T + i. The bias
    is returned in `dtype`, causality folded into it, padding beside it (`AttentionMask`).
    """
    padding = None
    if padding_mask is not None:
        if padding_mask.shape[-1] != k_len:
            raise ValueError(f"padding mask covers {padding_mask.shape[-1]} keys, expected {k_len}")
        padding = padding_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
    tril = None
    if causal and q_len > 1:
        if padding is None and bias is None and q_len == k_len:
            return AttentionMask(is_causal=True)
        tril = causal_mask(q_len, k_len, device)  # (1, 1, T, S)
    if bias is None:
        if padding is None or tril is None:
            return AttentionMask(tensor=tril if padding is None else padding)
        return AttentionMask(tensor=padding & tril)  # (B, 1, T, S)
    if bias.dtype != dtype:
        bias = bias.to(dtype)
    if tril is not None:
        # masked_fill (not adding -inf): the minimum of `dtype`, the dtype the scores are
        # computed in, so it stays finite there (an fp32 minimum cast to bf16 or fp16 would
        # be -inf). Every query may attend at least one key, so no row is fully masked.
        bias = bias.masked_fill(~tril, torch.finfo(dtype).min)  # (1, H, T, S)
    return AttentionMask(tensor=bias, padding=padding)


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

    "sdpa" calls torch's `scaled_dot_product_attention` (a fused kernel where torch has one
    for these inputs); "math" is the same computation written out, the reference the tests
    hold SDPA to: softmax(scale * Q K^T + bias, masked) V (Vaswani et al. 2017, Sec. 3.2.1).
    """
    if backend == "sdpa":
        return sdpa(q, k, v, mask, scale=scale, dropout=dropout)
    probs = attention_weights(q, k, mask, scale=scale)  # (B, H, T, S)
    if dropout > 0.0:
        probs = F.dropout(probs, dropout)
    return torch.matmul(probs, v)  # (B, H, T, Dh)


def attention_weights(q: Tensor, k: Tensor, mask: AttentionMask, *, scale: float) -> Tensor:
    """softmax(scale * Q K^T + bias, masked): q (B, H, T, Dh), k (B, H, S, Dh) -> (B, H, T, S),
    each row a distribution over the S keys."""
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale  # (B, H, T, S)
    allowed = mask.tensor if mask.tensor is not None and mask.tensor.dtype == torch.bool else None
    if mask.is_causal:
        allowed = causal_mask(q.shape[-2], k.shape[-2], q.device)  # (1, 1, T, S)
    elif allowed is None and mask.tensor is not None:
        scores = scores + mask.tensor  # an additive bias, masked entries already at the minimum
        allowed = mask.padding  # (B, 1, 1, S) or None
    if allowed is not None:
        # masked_fill (not adding -inf) keeps rows finite and never overflows
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    return torch.softmax(scores.float(), dim=-1).to(q.dtype)  # (B, H, T, S)


def split_heads(x: Tensor, n_parts: int, n_heads: int) -> list[Tensor]:
    """(B, L, n_parts * H * Dh) -> n_parts tensors of shape (B, H, L, Dh), as views."""
    b, length, _ = x.shape
    x = x.view(b, length, n_parts, n_heads, -1)  # (B, L, n_parts, H, Dh)
    x = x.permute(2, 0, 3, 1, 4)  # (n_parts, B, H, L, Dh)
    return list(x.unbind(0))


def merge_heads(x: Tensor) -> Tensor:
    """(B, H, T, Dh) -> (B, T, H * Dh)."""
    b, h, t, dh = x.shape
    return x.transpose(1, 2).reshape(b, t, h * dh)  # (B, T, H * Dh)


class _Attention(nn.Module):
    """What self- and cross-attention share: heads, scale, dropout, backend, the output
    projection, and the step from projected heads to the output."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_head: int,
        *,
        bias: bool,
        scale: bool,
        dropout: float,
        backend: str = "sdpa",
    ) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.scale = d_head**-0.5 if scale else 1.0
        self.dropout = dropout
        self.backend = check_backend(backend)  # Seq2SeqTransformer.set_attention_backend
        # a list to append each call's attention weights (B, H, T, S) to, or None (the usual):
        # set by s2s.evaluation.attention_maps.recording
        self.record: list[Tensor] | None = None
        # the subclass's input projections first, `out` last: parameter order (and so
        # initialisation and optimizer state order) as in every checkpoint so far
        self.make_input_projections(d_model, n_heads * d_head, bias)
        self.out = nn.Linear(n_heads * d_head, d_model, bias=bias)

    def make_input_projections(self, d_model: int, inner: int, bias: bool) -> None:
        raise NotImplementedError

    def attend_and_project(self, q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask) -> Tensor:
        """q (B, H, T, Dh) over k, v (B, H, S, Dh) -> (B, T, D): `attend`, heads merged, `out`."""
        dropout = self.dropout if self.training else 0.0
        if self.record is not None:
            self.record.append(attention_weights(q, k, mask, scale=self.scale).detach())
        y = attend(q, k, v, mask, scale=self.scale, dropout=dropout, backend=self.backend)
        return self.out(merge_heads(y))


class SelfAttention(_Attention):
    """Self-attention with one fused q/k/v projection D -> 3 * H * Dh."""

    def make_input_projections(self, d_model: int, inner: int, bias: bool) -> None:
        self.qkv = nn.Linear(d_model, 3 * inner, bias=bias)

    def forward(
        self,
        x: Tensor,
        mask: AttentionMask,
        *,
        rotary: RotaryAngles | None = None,
        cache: LayerCache | None = None,
    ) -> Tensor:
        """x (B, T, D) -> (B, T, D). With a cache, new keys/values are appended to it."""
        q, k, v = split_heads(self.qkv(x), 3, self.n_heads)  # each (B, H, T, Dh)
        if rotary is not None:
            q, k = rotary.rotate(q), rotary.rotate(k)
        if cache is not None:
            k, v = cache.append_self(k, v)  # (B, H, S, Dh) with S = past + T
        return self.attend_and_project(q, k, v, mask)


class CrossAttention(_Attention):
    """Decoder-to-encoder attention: q from D -> H * Dh, fused k/v from D -> 2 * H * Dh."""

    def make_input_projections(self, d_model: int, inner: int, bias: bool) -> None:
        self.q = nn.Linear(d_model, inner, bias=bias)
        self.kv = nn.Linear(d_model, 2 * inner, bias=bias)

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
        (q,) = split_heads(self.q(x), 1, self.n_heads)  # (B, H, T, Dh)
        if rotary is not None:
            q = rotary.rotate(q)
        if cache is not None and cache.cross_k is not None:
            k, v = cache.cross_k, cache.cross_v
        else:
            k, v = split_heads(self.kv(memory), 2, self.n_heads)  # each (B, H, S, Dh)
            if memory_rotary is not None:
                k = memory_rotary.rotate(k)
            if cache is not None:
                cache.cross_k, cache.cross_v = k.contiguous(), v.contiguous()
        return self.attend_and_project(q, k, v, mask)
