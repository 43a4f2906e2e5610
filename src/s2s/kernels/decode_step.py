"""One decoding step of a decoder layer without module calls: the token-by-token fast path.

Notation: B batch (times beams), D model dim, H heads, Dh head dim, S source length.

Why: decoding one token at a time runs every decoder sublayer on a (B, 1, D) input, where each
operation does little work and Python's per-call cost does not shrink with it (a layer's
`forward` makes 16 module calls, builds lambdas and goes through `_Residual` and the attention
and feed-forward modules). `layer_step` computes exactly the same thing for one new position,
reading the same parameters and calling the same kernels, as one flat function; even helper
functions were inlined (timings: benchmarks/README.md).

Because it calls `forward` methods directly, module hooks would not run, and a module that a
user subclassed or patched would be bypassed, so `FlatDecoderLayer` (the kernel twin of
`DecoderLayer`) takes it only where neither is the case (`steps_can_skip_modules`, checked
when `s2s.kernels.decoding_layout` starts: inference, eval mode). tests/test_kernels_decode.py
checks it against `DecoderLayer.forward` for every positional scheme, norm placement and
feed-forward kind.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as torch_module

from s2s.kernels.dropout import Dropout
from s2s.kernels.linear import DecodeLinear
from s2s.model.attention import AttentionMask, CrossAttention, SelfAttention, attend, sdpa
from s2s.model.cache import LayerCache
from s2s.model.feedforward import FeedForward, activate
from s2s.model.layers import DecoderLayer, _Residual
from s2s.model.norms import LayerNorm, RMSNorm
from s2s.model.positions import RotaryAngles


class FlatDecoderLayer(DecoderLayer):
    """`DecoderLayer` whose one-position inference steps run `layer_step` while `flat` is set."""

    flat = False  # set by `s2s.kernels.decoding_layout` where `steps_can_skip_modules` holds

    def forward(self, x, self_mask, memory, memory_mask, rotary, cache=None, memory_rotary=None):
        """`DecoderLayer.forward`; `layer_step` for one position of inference while `flat`."""
        if self.flat and can_step(x, cache, self.training):
            return layer_step(self, x, self_mask, memory_mask, rotary, cache)
        return super().forward(x, self_mask, memory, memory_mask, rotary, cache, memory_rotary)


# the forward of every class whose calls `layer_step` inlines, as this module first saw it
_SHIPPED = {
    cls: cls.__dict__["forward"]
    for cls in (
        DecoderLayer, FlatDecoderLayer, _Residual, SelfAttention, CrossAttention, FeedForward,
        nn.Linear, DecodeLinear, LayerNorm, RMSNorm, nn.Dropout, Dropout,
    )
}  # fmt: skip


def steps_can_skip_modules(decoder: nn.Module) -> bool:
    """Whether `layer_step` computes what calling the decoder's modules would: every module in
    it is an s2s class (the model's or a kernel twin; or torch's ModuleList / Embedding) whose
    `forward`, in every class it inherits from, is the one shipped (not replaced on the
    instance or on a class: a patched, subclassed or swapped module is always called); all in
    eval mode; and no forward or backward hook registered, globally or on any of them (hooks
    always run). Module-level functions (`attend`, `activate`) patched by a user are not
    detected."""
    global_hooks = (
        "_global_forward_hooks",
        "_global_forward_pre_hooks",
        "_global_backward_hooks",
        "_global_backward_pre_hooks",
    )
    if any(getattr(torch_module, name, None) for name in global_hooks):
        return False
    return all(
        (type(m).__module__.startswith("s2s.") or type(m) in (nn.ModuleList, nn.Embedding))
        and all(_shipped(cls) for cls in type(m).__mro__)
        and "forward" not in m.__dict__
        and not m.training
        and not (m._forward_hooks or m._forward_pre_hooks)
        and not (m._backward_hooks or m._backward_pre_hooks)
        for m in decoder.modules()
    )


def _shipped(cls: type) -> bool:
    forward = cls.__dict__.get("forward")
    return forward is None or _SHIPPED.get(cls, forward) is forward


def layer_step(
    layer: DecoderLayer,
    x: Tensor,
    self_mask: AttentionMask,
    memory_mask: AttentionMask,
    rotary: RotaryAngles | None,
    cache: LayerCache,
) -> Tensor:
    """`layer(x, ...)` for x (B, 1, D), one new position, in eval mode, when the cache already
    holds the cross-attention keys and values -> (B, 1, D). Appends to the cache.

    Written flat on purpose: a layer's `forward` makes ~40 helper calls (`_Residual`,
    lambdas, `attend`, `split_heads`, ...), each costing more than its arithmetic here.
    """
    sa, ca, ffn = layer.self_attn, layer.cross_attn, layer.ffn
    pre_norm = layer.self_attn_block.pre_norm
    b = x.shape[0]

    # causal self-attention over the cached positions and this one
    h = layer.self_attn_block.norm.forward(x) if pre_norm else x
    h = _linear(sa.qkv, h)  # (B, 1, 3 * H * Dh)
    q, k, v = h.view(b, 3, sa.n_heads, 1, -1).unbind(1)  # each (B, H, 1, Dh)
    if rotary is not None:
        q, k = rotary.rotate(q), rotary.rotate(k)
    k, v = cache.append_self(k, v)  # (B, H, T_past + 1, Dh)
    y = _attend(sa, q, k, v, self_mask)  # (B, H, 1, Dh)
    y = _linear(sa.out, y.reshape(b, 1, -1))
    x = x + y if pre_norm else layer.self_attn_block.norm.forward(x + y)

    # cross-attention to the cached encoder keys/values (B, H, S, Dh)
    h = layer.cross_attn_block.norm.forward(x) if pre_norm else x
    q = _linear(ca.q, h).view(b, ca.n_heads, 1, -1)  # (B, H, 1, Dh)
    if rotary is not None and layer.rotary_cross_attention:
        q = rotary.rotate(q)
    y = _attend(ca, q, cache.cross_k, cache.cross_v, memory_mask)
    y = _linear(ca.out, y.reshape(b, 1, -1))
    x = x + y if pre_norm else layer.cross_attn_block.norm.forward(x + y)

    # feed-forward
    h = layer.ffn_block.norm.forward(x) if pre_norm else x
    h = _linear(ffn.wi, h)  # (B, 1, F) or (B, 1, 2F)
    if ffn.gated:
        gate, up = h.chunk(2, dim=-1)
        h = activate(gate, ffn.activation) * up
    else:
        h = activate(h, ffn.activation)
    y = _linear(ffn.wo, h)
    return x + y if pre_norm else layer.ffn_block.norm.forward(x + y)


def _linear(layer: DecodeLinear, x: Tensor) -> Tensor:
    """`layer(x)` without autograd: its decode weight if it has one (`s2s.kernels.linear`)."""
    if layer.decode is not None:
        return layer.decode.apply(x, layer.bias)
    return F.linear(x, layer.weight, layer.bias)


def _attend(module: SelfAttention | CrossAttention, q, k, v, mask: AttentionMask) -> Tensor:
    """`attend` without dropout or autograd: torch's kernel is always fused then."""
    if module.backend == "sdpa":
        return sdpa(q, k, v, mask, scale=module.scale, dropout=0.0)
    return attend(q, k, v, mask, scale=module.scale, dropout=0.0, backend=module.backend)


def can_step(x: Tensor, cache: LayerCache | None, training: bool) -> bool:
    """Whether `layer_step` applies: one new position, no autograd, and the layer's
    cross-attention keys/values already cached."""
    return (
        not training
        and cache is not None
        and cache.cross_k is not None
        and x.shape[1] == 1
        and not torch.is_grad_enabled()
    )
