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

So several rows use oneDNN's prepacked weight (the kernel `torch.compile` itself uses for
CPU linears; a private torch op, so when it is missing the transpose is used), except small
weights: oneDNN costs ~15 us a call whatever the size. Per product at 8 rows, weights cycled
from memory, microseconds:

    weight (O x I)               768 x 256   256 x 256   64 x 64
    F.linear(x, W)                   209          57        6.6
    x @ W_t                          189          47        5.0
    oneDNN prepacked W                92          41       18.3

(a d_model-64 decoder at batch 8: 1.65 ms a step with the transpose, 2.35 with oneDNN).
One row uses the transpose unless the weight narrows (O < I, the feed-forward `wo`), where
`F.linear` on the (O, I) weight reads memory faster; one row, T5-small shapes, us:

    weight (O x I)     1536 x 512   2048 x 512   512 x 1024   32128 x 512
    F.linear(x, W)           353          464          156          7316
    x @ W_t                  196          217          221          3141

The one-row copies made together are placed back to back in one buffer that Linux backs with
2 MB pages (`_one_buffer`): a product then streams its weight without a TLB miss every 4 KB.

`decoding_layout` makes these copies for the span of one `generate` call and drops them
afterwards, so they can never go stale. Making them costs time too (page faults on fresh
memory plus the copy: 13% of a 64-token greedy call at batch 1 for T5-small shapes), so a
caller that decodes many times with fixed weights (generate.py) passes a `memo` that keeps
them across calls (`Seq2SeqTransformer.decoding_session`). Under autograd the layer always
uses its parameter. Results equal `F.linear` up to float rounding (summation order).
"""

from __future__ import annotations

import ctypes
import dataclasses
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
    that Linux may back with 2 MB pages (`_one_buffer`), so when one of them must be remade,
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
    placed = _one_buffer([made[name].tensor for name in fresh])
    for name, tensor in zip(fresh, placed, strict=True):
        made[name] = dataclasses.replace(made[name], tensor=tensor)
    if memo is not None:
        memo.update(made)
    return made


HUGE_PAGE = 2 * 2**20  # bytes in an x86-64 / arm64 transparent huge page
_MADV_HUGEPAGE = 14  # Linux's madvise advice number


def _one_buffer(tensors: list[Tensor]) -> list[Tensor]:
    """Contiguous copies of `tensors`, back to back in one buffer that starts on a 2 MB
    boundary and is advised for huge pages, when they are CPU tensors of one dtype filling at
    least one huge page; otherwise `t.contiguous()` of each (no copy if already contiguous).

    A one-row product reads its weight once, and with 4 KB pages every 4 KB costs a TLB miss:
    512 x 512 float32 products (1 MB) ran 8-10% faster from huge pages on the 2-core EPYC, and
    greedy decoding at batch 1 4-5% faster (d_model 256) and 7-8% (T5-small shapes). Linux
    backs an `madvise(MADV_HUGEPAGE)` region with huge pages when transparent huge pages are
    "always" or "madvise" (the usual default); where the advice is refused or unknown, the
    buffer is an ordinary one.
    """
    if not tensors:
        return tensors
    dtype, device = tensors[0].dtype, tensors[0].device
    size = tensors[0].element_size()
    align = 64 // size  # start every copy on a cache line
    offsets, total = [], 0
    for t in tensors:
        offsets.append(total)
        total += -(-t.numel() // align) * align
    one_kind = all(t.dtype == dtype and t.device == device for t in tensors)
    if device.type != "cpu" or not one_kind or total * size < HUGE_PAGE:
        return [t.contiguous() for t in tensors]
    raw = torch.empty(total + HUGE_PAGE // size, dtype=dtype, device=device)
    start = -(-raw.data_ptr() // HUGE_PAGE) * HUGE_PAGE  # within the first huge page of raw
    if sys.platform == "linux":
        # whole huge pages only, all inside raw; advised before the copies below touch them
        _advise_huge_pages(start, total * size // HUGE_PAGE * HUGE_PAGE)
    buffer = raw[(start - raw.data_ptr()) // size :]
    return [
        buffer[offset : offset + t.numel()].view(t.shape).copy_(t)
        for offset, t in zip(offsets, tensors, strict=True)
    ]


def _advise_huge_pages(address: int, length: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return False
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise(address, length, _MADV_HUGEPAGE) == 0


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
def decoding_layout(
    module: nn.Module,
    rows: int,
    memo: Memo | None = None,
    extra: dict[str, Tensor] | None = None,
) -> Iterator[dict[str, DecodeWeight]]:
    """Within the block, every `Linear` inside `module` on the CPU multiplies its inputs of
    `rows` rows by a decode weight; other devices keep their layout (not measured there).
    With `memo`, layouts made by an earlier block for the same rows are reused. Yields every
    layout by name, including those of the `extra` weights (made together, see
    `make_layouts`), for the caller to use."""
    layers = {
        name: m
        for name, m in module.named_modules()
        if isinstance(m, Linear) and m.weight.device.type == "cpu"
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
