"""Incremental-decoding cache: per-layer keys/values and the current position offset.

Notation: B batch (times beams), H heads, T_past target positions already decoded,
S source length, Dh head dim.

Self-attention keys/values grow by the number of new target positions at every `decode`
call; cross-attention keys/values are computed from the encoder output on the first call
and reused afterwards. `offset` counts the target positions already decoded, which is the
absolute position of the next query (needed by every positional scheme).
The cache is updated in place by `Seq2SeqTransformer.decode`, which also returns it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class LayerCache:
    """One decoder layer's cached tensors, each (B, H, L, Dh) or None before first use."""

    self_k: Tensor | None = None  # (B, H, T_past, Dh)
    self_v: Tensor | None = None
    cross_k: Tensor | None = None  # (B, H, S, Dh)
    cross_v: Tensor | None = None

    def append_self(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append new keys/values (B, H, T, Dh); return all of them, (B, H, T_past + T, Dh)."""
        if self.self_k is not None:
            k = torch.cat((self.self_k, k), dim=2)
            v = torch.cat((self.self_v, v), dim=2)
        self.self_k, self.self_v = k, v
        return k, v

    def reorder(self, index: Tensor) -> None:
        for name in ("self_k", "self_v", "cross_k", "cross_v"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.index_select(0, index))


@dataclass
class DecoderCache:
    """Everything the decoder needs to continue from where it stopped."""

    layers: list[LayerCache] = field(default_factory=list)
    offset: int = 0

    @classmethod
    def empty(cls, n_layers: int) -> DecoderCache:
        return cls(layers=[LayerCache() for _ in range(n_layers)], offset=0)

    def reorder(self, beam_indices: Tensor) -> DecoderCache:
        """Select batch rows (B,) -> (B',) in every cached tensor, e.g. after a beam step.

        Updates the cache in place and returns it.
        """
        for layer in self.layers:
            layer.reorder(beam_indices)
        return self
