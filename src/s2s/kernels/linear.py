"""Decode weights: copies of a linear layer's weight laid out for few-row products.

Notation: N rows (batch x new positions), I in features, O out features.

Why: token-by-token decoding multiplies a handful of rows by every decoder weight at every
step, and `F.linear(x, W)` (x @ W.T on the (O, I) parameter) is far from the memory's speed
for so few rows on CPU (timings: benchmarks/README.md). So, without autograd:
- one row: a contiguous transpose W.T (I, O), unless the weight narrows (O < I, the
  feed-forward `wo`), where `F.linear` on W itself reads memory faster;
- several rows: oneDNN's prepacked weight (the kernel `torch.compile` itself uses for CPU
  linears; a private torch op, feature-detected, with the transpose as the fallback), except
  weights under ONEDNN_MIN_ELEMENTS, where oneDNN's fixed cost per call dominates.
The one-row copies made together go back to back into one huge-page buffer
(`s2s.kernels.pages`).

`decoding_layout` makes these copies for the span of one `generate` call and drops them
afterwards, so they can never go stale. Making them costs time too (page faults on fresh
memory plus the copy), so a caller that decodes many times with fixed weights (generate.py)
passes a `memo` that keeps them across calls (`s2s.kernels.decoding_session`). Under
autograd the layer always uses its parameter. Results equal `F.linear` up to float rounding
(summation order).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s2s.kernels.pages import one_buffer

ONEDNN_MIN_ELEMENTS = 256 * 256  # smaller weights use the transpose at any row count
Memo = dict[str, "DecodeWeight"]  # layer name -> its layout, see `make_layouts`


@dataclass(frozen=True, eq=False)
class DecodeWeight:
    """A weight (O, I) laid out for `rows`-row products: "plain" (the (O, I) weight, the
    parameter itself or a copy in `make_layouts`' buffer), "transposed" (I, O, contiguous
    once made by `make_layouts`) or "onednn" (packed). `source` (the weight's storage, held so that
    its address cannot be reused by another tensor) and `version` identify what it was made
    from, so a memoised layout whose weight was replaced or edited in place is remade."""

    kind: str
    tensor: Tensor = field(repr=False)
    rows: int = 0
    source: Tensor | None = field(default=None, repr=False)  # the weight, detached
    version: int = 0  # the weight's in-place version counter when the layout was made

    def apply(self, x: Tensor, bias: Tensor | None) -> Tensor:
        """x (..., I) -> (..., O)."""
        if self.kind == "onednn":
            return torch.ops.mkldnn._linear_pointwise(x, self.tensor, bias, "none", [], "")
        if self.kind == "plain":
            return F.linear(x, self.tensor, bias)
        y = torch.matmul(x, self.tensor)
        return y if bias is None else y + bias

    def made_from(self, weight: Tensor, rows: int) -> bool:
        """Whether this layout is for `rows` rows of `weight` as it is now."""
        return (
            self.rows == rows
            and self.source is not None
            and self.source.data_ptr() == weight.data_ptr()
            and self.source.dtype == weight.dtype
            and self.version == weight._version
        )


def decode_weight(weight: Tensor, rows: int, *, copy: bool = True) -> DecodeWeight:
    """The faster layout of `weight` (O, I) for products with `rows` rows (see module doc).

    copy=False leaves the transposed layout a view of the weight, for the caller to copy."""
    weight = weight.detach()
    source = {"rows": rows, "source": weight, "version": weight._version}
    if rows > 1 and weight.numel() >= ONEDNN_MIN_ELEMENTS and _onednn_available():
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
            return DecodeWeight("onednn", packed, **source)
        except RuntimeError:  # e.g. a dtype this torch build cannot pack
            pass
    out_features, in_features = weight.shape
    if rows == 1 and out_features < in_features:
        return DecodeWeight("plain", weight, **source)
    transposed = weight.t()
    return DecodeWeight("transposed", transposed.contiguous() if copy else transposed, **source)


def make_layouts(
    weights: dict[str, Tensor], rows: int, memo: Memo | None
) -> dict[str, DecodeWeight]:
    """`decode_weight(w, rows)` for each named weight, taken from `memo` when it was made there
    from the same weight for the same rows (None: made each call), and kept in it.

    One layout per name: a call with another row count replaces it, so a memo never holds more
    than one copy of the weights (generate.py's last, smaller batch remakes them once; the
    stale layouts are dropped before the new ones are made, and names not asked for are
    forgotten). The transposed and plain layouts made by one call are written into one buffer
    that Linux may back with 2 MB pages (`s2s.kernels.pages`), so when one of them must be remade,
    all of them are.
    """
    made: dict[str, DecodeWeight] = {}
    if memo is not None:
        for name, weight in weights.items():
            kept = memo.get(name)
            if kept is not None and kept.made_from(weight, rows):
                made[name] = kept
        if len(made) < len(weights):  # one buffer: remake all of its layouts together
            made = {name: w for name, w in made.items() if w.kind == "onednn"}
        memo.clear()  # stale layouts are freed before new ones are made
        kept = None
    fresh = [name for name in weights if name not in made]
    for name in fresh:
        made[name] = decode_weight(weights[name], rows, copy=False)
    fresh = [name for name in fresh if made[name].kind != "onednn"]  # (packed: opaque tensors)
    placed = one_buffer([made[name].tensor for name in fresh])
    for name, tensor in zip(fresh, placed, strict=True):
        made[name] = dataclasses.replace(made[name], tensor=tensor)
    if memo is not None:
        memo.update(made)
    return made


def _onednn_available() -> bool:
    ops = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


class DecodeLinear(nn.Linear):
    """`nn.Linear` plus an optional inference-only decode weight, see the module doc."""

    decode: DecodeWeight | None = None  # set by `decoding_layout`

    def forward(self, x: Tensor) -> Tensor:
        """x (..., I) -> (..., O)."""
        if self.decode is None or torch.is_grad_enabled():
            return F.linear(x, self.weight, self.bias)
        return self.decode.apply(x, self.bias)


@contextmanager
def decoding_layout(
    module: nn.Module,
    rows: int,
    memo: Memo | None = None,
    extra: dict[str, Tensor] | None = None,
) -> Iterator[dict[str, DecodeWeight]]:
    """Within the block, every `DecodeLinear` inside `module` on the CPU multiplies its inputs of
    `rows` rows by a decode weight; other devices keep their layout (not measured there).
    With `memo`, layouts made by an earlier block for the same rows are reused. Yields every
    layout by name, including those of the `extra` weights (made together, see
    `make_layouts`), for the caller to use."""
    layers = {
        name: m
        for name, m in module.named_modules()
        if isinstance(m, DecodeLinear) and m.weight.device.type == "cpu"
    }
    weights = {name: layer.weight for name, layer in layers.items()}
    made = make_layouts(weights | (extra or {}), rows, memo)
    for name, layer in layers.items():
        layer.decode = made[name]
    try:
        yield made
    finally:
        for layer in layers.values():
            layer.decode = None
