"""Weight copies on 2 MB pages: fewer TLB misses when a one-row product streams a weight.

Why: a one-row product reads its weight once, and with 4 KB pages every 4 KB costs a TLB miss;
from huge pages the decoding products ran faster (benchmarks/README.md). Linux backs an
`madvise(MADV_HUGEPAGE)` region with huge pages when transparent huge pages are "always" or
"madvise" (the usual default). `madvise` is called through ctypes: elsewhere (another OS, no
libc symbol, advice refused) the buffer is an ordinary one, with the same contents.
"""

from __future__ import annotations

import ctypes
import sys

import torch
from torch import Tensor

HUGE_PAGE = 2 * 2**20  # bytes in an x86-64 / arm64 transparent huge page
_MADV_HUGEPAGE = 14  # Linux's madvise advice number


def one_buffer(tensors: list[Tensor]) -> list[Tensor]:
    """Contiguous copies of `tensors`, back to back in one buffer that starts on a 2 MB
    boundary and is advised for huge pages, when they are CPU tensors of one dtype filling at
    least one huge page; otherwise `t.contiguous()` of each (no copy if already contiguous).
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
