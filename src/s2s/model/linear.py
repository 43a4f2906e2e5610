"""A linear layer that can decode with a copy of its weight laid out for few-row products.

Notation: N rows (batch x new positions), I in features, O out features.

Token-by-token decoding multiplies a handful of rows by every decoder weight at every step,
so a step streams all those weights from memory, and `F.linear(x, W)` (x @ W.T on the (O, I)
parameter) is far from the memory's speed for so few rows on CPU. Two layouts do better,
measured with torch 2.13 on the 2-core EPYC, one thread, the 25 weights of a d_model-256,
4-layer decoder plus an 8192-token head (21 MB, cycled so that they come from memory as in
real decoding), milliseconds per step:

    rows                         1      2      4      8      32
    F.linear(x, W)             2.68      -      -   4.37       -
    x @ W_t, W_t = W.T (I, O)  1.11   1.73   2.86   3.05    6.07
    oneDNN prepacked W         2.07   1.35   1.60   2.06    4.27

So one row uses the contiguous transpose and several rows oneDNN's prepacked weight (the
kernel `torch.compile` itself uses for CPU linears; a private torch op, so when it is missing
the transpose is used). `decoding_layout` makes these copies for the span of one `generate`
call (one extra copy of the decoder's weights meanwhile) and drops them afterwards, so they
can never go stale; under autograd the layer always uses its parameter. Results equal
`F.linear` up to float rounding (summation order).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class DecodeWeight:
    """A weight (O, I) re-laid for `rows`-row products: "transposed" (I, O) or "onednn"."""

    kind: str
    tensor: Tensor

    def apply(self, x: Tensor, bias: Tensor | None) -> Tensor:
        """x (..., I) -> (..., O)."""
        if self.kind == "onednn":
            return torch.ops.mkldnn._linear_pointwise(x, self.tensor, bias, "none", [], "")
        y = torch.matmul(x, self.tensor)
        return y if bias is None else y + bias


def decode_weight(weight: Tensor, rows: int) -> DecodeWeight:
    """The faster layout of `weight` (O, I) for products with `rows` rows (see module doc)."""
    weight = weight.detach()
    if rows > 1 and _onednn_available():
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
            return DecodeWeight("onednn", packed)
        except RuntimeError:  # e.g. a dtype this torch build cannot pack
            pass
    return DecodeWeight("transposed", weight.t().contiguous())


def _onednn_available() -> bool:
    ops = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


class Linear(nn.Linear):
    """`nn.Linear` plus an optional inference-only decode weight, see the module doc."""

    decode: DecodeWeight | None = None  # set by `decoding_layout`

    def forward(self, x: Tensor) -> Tensor:
        """x (..., I) -> (..., O)."""
        if self.decode is None or torch.is_grad_enabled():
            return F.linear(x, self.weight, self.bias)
        return self.decode.apply(x, self.bias)


@contextmanager
def decoding_layout(module: nn.Module, rows: int) -> Iterator[None]:
    """Within the block, every `Linear` inside `module` on the CPU multiplies its inputs of
    `rows` rows by a decode weight; other devices keep their layout (not measured there)."""
    layers = [m for m in module.modules() if isinstance(m, Linear)]
    layers = [m for m in layers if m.weight.device.type == "cpu"]
    for layer in layers:
        layer.decode = decode_weight(layer.weight, rows)
    try:
        yield
    finally:
        for layer in layers:
            layer.decode = None
