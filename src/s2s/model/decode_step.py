"""One decoding step of a decoder layer without module calls: the token-by-token fast path.

Notation: B batch (times beams), D model dim, H heads, Dh head dim, S source length.

Decoding one token at a time runs every decoder sublayer on a (B, 1, D) input, where each
operation does little work and Python's per-call cost does not shrink with it:
`DecoderLayer.forward` makes 16 nn.Module calls (each ~1.5 us through `Module.__call__`'s
hook checks), builds three lambdas and goes through `_Residual`, `attend`'s dispatch and the
attention and feed-forward modules. `layer_step` computes exactly the same thing for one new
position, reading the same parameters and calling the same kernels, as one flat function:
each Python call costs ~0.7 us in a decoding step (its code is cold after the weight
products), so even helper functions were inlined. In-process A/B on the generation
benchmark's model (d_model 256, 4+4 layers, vocabulary 8192, 1 thread, 2-core EPYC): greedy
steps 1.06x faster at batch 8, 1.07-1.10x at batch 1, the same tokens (a first version that
still called `_split_heads`, `attend`, ... gained 0-3%).

Because it calls `forward` methods directly, module hooks would not run, and a module that a
user subclassed or patched would be bypassed, so the decoder uses it only where neither is
the case (`steps_can_skip_modules`, checked when `decoding_layout` starts: inference, eval
mode). tests/test_decode_step.py checks it against `DecoderLayer.forward` for every
positional scheme, norm placement and feed-forward kind.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as torch_module

from s2s.model.attention import AttentionMask, CrossAttention, SelfAttention, attend
from s2s.model.cache import LayerCache
from s2s.model.dropout import Dropout
from s2s.model.feedforward import FeedForward, activate
from s2s.model.layers import DecoderLayer, _Residual
from s2s.model.linear import Linear
from s2s.model.norms import LayerNorm, RMSNorm
from s2s.model.positions import RotaryAngles

# the forward of every class whose calls `layer_step` inlines, as this module first saw it
_SHIPPED = {
    cls: cls.forward
    for cls in (
        DecoderLayer, _Residual, SelfAttention, CrossAttention, FeedForward, Linear, LayerNorm,
        RMSNorm, Dropout,
    )
}  # fmt: skip


def steps_can_skip_modules(decoder: nn.Module) -> bool:
    """Whether `layer_step` computes what calling the decoder's modules would: every module in
    it is an s2s class (or torch's ModuleList / Embedding) whose `forward` is the one shipped
    (not replaced on the instance or on the class: a patched, subclassed or swapped module is
    always called); all in eval mode; and no forward or backward hook registered, globally or
    on any of them (hooks always run). Module-level functions (`attend`, `activate`) patched
    by a user are not detected."""
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
        and type(m).forward is _SHIPPED.get(type(m), type(m).forward)
        and "forward" not in m.__dict__
        and not m.training
        and not (m._forward_hooks or m._forward_pre_hooks)
        and not (m._backward_hooks or m._backward_pre_hooks)
        for m in decoder.modules()
    )


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

    Written flat on purpose: every helper call costs ~0.7 us here, and a layer used to make
    ~40 of them (`_Residual`, lambdas, `attend`, `_split_heads`, ...).
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


def _linear(layer: Linear, x: Tensor) -> Tensor:
    """`layer(x)` without autograd: its decode weight if it has one (`s2s.model.linear`)."""
    if layer.decode is not None:
        return layer.decode.apply(x, layer.bias)
    return F.linear(x, layer.weight, layer.bias)


def _attend(module: SelfAttention | CrossAttention, q, k, v, mask: AttentionMask) -> Tensor:
    """`attend` without dropout or autograd: torch's kernel is always fused then."""
    if module.backend == "sdpa":
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask.tensor, is_causal=mask.is_causal, scale=module.scale
        )
    return attend(q, k, v, mask, scale=module.scale, dropout=0.0, backend=module.backend)


def can_step(x: Tensor, last_cache: LayerCache | None, training: bool) -> bool:
    """Whether `layer_step` applies: one new position, no autograd, and the cross-attention
    keys/values cached up to the last layer (`last_cache`)."""
    return (
        not training
        and last_cache is not None
        and last_cache.cross_k is not None
        and x.shape[1] == 1
        and not torch.is_grad_enabled()
    )
