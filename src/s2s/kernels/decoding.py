"""Decoding with decode weights and flat steps: `decoding_layout` and `decoding_session`.

Notation: B batch, T new positions, D model dim, V vocab.

`Seq2SeqTransformerKernel` is the twin of `Seq2SeqTransformer`: its LM head multiplies by a
decode weight inside `decoding_layout` (the tied head is the embedding matrix, not a linear
layer, so it needs its own seam), and it holds a `decoding_session`'s memo of layouts.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from s2s.kernels.decode_step import FlatDecoderLayer, steps_can_skip_modules
from s2s.kernels.linear import DecodeWeight, Memo
from s2s.kernels.linear import decoding_layout as linear_layouts
from s2s.model.transformer import Seq2SeqTransformer


class Seq2SeqTransformerKernel(Seq2SeqTransformer):
    """`Seq2SeqTransformer` whose LM head may use a decode weight (see the module doc)."""

    head_layout: DecodeWeight | None = None  # set only by `decoding_layout`
    layout_memo: Memo | None = None  # set only by `decoding_session`

    def logits(self, hidden: Tensor) -> Tensor:
        """Decoder output (B, T, D) -> logits (B, T, V)."""
        if self.head_layout is None or torch.is_grad_enabled():
            return super().logits(hidden)
        if self.logit_scale != 1.0:
            hidden = hidden * self.logit_scale
        logits = self.head_layout.apply(hidden, None)
        return logits if self.final_logits_bias is None else logits + self.final_logits_bias


@contextmanager
def decoding_layout(model: nn.Module, rows: int) -> Iterator[None]:
    """Within the block, an installed model's decoder and LM head multiply inputs of `rows`
    rows (batch, or batch x beams) by copies of their weights laid out for that, when autograd
    is off (`s2s.kernels.linear`); one-position steps skip the decoder's module calls where
    that cannot change what runs: no hook, no patched or replaced module, eval mode
    (`s2s.kernels.decode_step`). The copies are dropped at the end, unless a
    `decoding_session` keeps them. A model without the kernels installed decodes as it is.
    """
    if not isinstance(model, Seq2SeqTransformerKernel):
        yield
        return
    head = {"lm_head": model.head_weight} if model.head_weight.device.type == "cpu" else {}
    layers = [m for m in model.decoder.layers if isinstance(m, FlatDecoderLayer)]
    with linear_layouts(model.decoder, rows, model.layout_memo, extra=head) as made:
        flat_before = [layer.flat for layer in layers]
        try:
            model.head_layout = made.get("lm_head")
            flat = steps_can_skip_modules(model.decoder)
            for layer in layers:
                layer.flat = flat
            yield
        finally:
            model.head_layout = None
            for layer, before in zip(layers, flat_before, strict=True):
                layer.flat = before


@contextmanager
def decoding_session(model: nn.Module) -> Iterator[None]:
    """Within the block, each decoding layout of an installed model is made once and reused by
    every later `generate` call with the same rows (batch x beams), instead of once per call;
    a call with other rows replaces them (one copy of the weights at most).

    The weights must not change inside the block. A layout whose weight was replaced
    (`model.to(...)`, `load_state_dict(assign=True)`) or edited in place is remade, but only
    in-place edits that bump the tensor's version counter are seen (`load_state_dict`, foreach
    optimizers; torch's fused AdamW and `.data` edits, e.g. an EMA, are not), so do not train
    inside a session. Sessions nest (the outermost one keeps the layouts); leaving the
    outermost frees them. A model without the kernels installed: nothing to keep.
    """
    if not isinstance(model, Seq2SeqTransformerKernel) or model.layout_memo is not None:
        yield
        return
    model.layout_memo = {}
    try:
        yield
    finally:
        model.layout_memo = None
