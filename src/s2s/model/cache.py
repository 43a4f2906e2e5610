"""Incremental-decoding cache: per-layer keys/values and the current position offset.

Notation: B batch (times beams), H heads, T_past target positions already decoded,
S source length, Dh head dim, C capacity (positions the buffers can hold).

Self-attention keys/values grow by the number of new target positions at every `decode`
call. They are written into preallocated (B, H, C, Dh) buffers, so a step copies only its
own new keys and values; concatenating to the past would copy all of them every step
(a measurable share of greedy decoding, benchmarks/README.md). A buffer that fills up
doubles. Cross-attention keys/values are computed from the encoder output on the first call
and reused afterwards. `offset` counts the target positions already decoded, which is the
absolute position of the next query (needed by every positional scheme).
`positions` memoises a stack's position table (T5 bias or rotary angles) for C positions, so
a step slices it instead of recomputing it.
The cache is updated in place by `Seq2SeqTransformer.decode`, which also returns it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass
class LayerCache:
    """One decoder layer's cached tensors. `capacity` is the initial buffer length."""

    capacity: int = 0
    length: int = 0  # T_past: filled positions of the self-attention buffers
    self_k_buffer: Tensor | None = None  # (B, H, C, Dh)
    self_v_buffer: Tensor | None = None
    cross_k: Tensor | None = None  # (B, H, S, Dh)
    cross_v: Tensor | None = None

    @property
    def self_k(self) -> Tensor | None:
        """Keys of the positions decoded so far, (B, H, T_past, Dh), a view of the buffer."""
        return None if self.self_k_buffer is None else self.self_k_buffer[:, :, : self.length]

    @property
    def self_v(self) -> Tensor | None:
        return None if self.self_v_buffer is None else self.self_v_buffer[:, :, : self.length]

    def append_self(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append new keys/values (B, H, T, Dh); return all of them, (B, H, T_past + T, Dh)."""
        end = self.length + k.shape[2]
        size = 0 if self.self_k_buffer is None else self.self_k_buffer.shape[2]
        if end > size:
            self._grow(k, max(end, self.capacity, 2 * size))
        self.self_k_buffer[:, :, self.length : end] = k
        self.self_v_buffer[:, :, self.length : end] = v
        self.length = end
        return self.self_k, self.self_v

    def _grow(self, like: Tensor, size: int) -> None:
        b, h, _, dh = like.shape
        new_k = like.new_empty(b, h, size, dh)
        new_v = like.new_empty(b, h, size, dh)
        if self.length:
            new_k[:, :, : self.length] = self.self_k
            new_v[:, :, : self.length] = self.self_v
        self.self_k_buffer, self.self_v_buffer = new_k, new_v

    def reorder_self(self, index: Tensor) -> None:
        """Select batch rows (B,) -> (B',) of the self-attention keys/values only."""
        if self.self_k_buffer is not None:
            self.self_k_buffer = self.self_k_buffer.index_select(0, index)
            self.self_v_buffer = self.self_v_buffer.index_select(0, index)

    def reorder(self, index: Tensor) -> None:
        """Select batch rows (B,) -> (B',) of every cached tensor."""
        self.reorder_self(index)
        if self.cross_k is not None:
            self.cross_k = self.cross_k.index_select(0, index)
            self.cross_v = self.cross_v.index_select(0, index)


@dataclass
class DecoderCache:
    """Everything the decoder needs to continue from where it stopped."""

    layers: list[LayerCache] = field(default_factory=list)
    offset: int = 0
    capacity: int = 0
    positions: Any = None  # the decoder's memoised position table, see `Decoder`

    @classmethod
    def empty(cls, n_layers: int, capacity: int = 0) -> DecoderCache:
        """A cache whose buffers first hold `capacity` positions (0: just what is decoded)."""
        if capacity < 0:
            raise ValueError(f"cache capacity must be >= 0, got {capacity}")
        layers = [LayerCache(capacity=capacity) for _ in range(n_layers)]
        return cls(layers=layers, offset=0, capacity=capacity)

    def reorder(self, beam_indices: Tensor) -> DecoderCache:
        """Select batch rows (B,) -> (B',) in every cached tensor, e.g. after a beam step.

        Updates the cache in place and returns it.
        """
        for layer in self.layers:
            layer.reorder(beam_indices)
        return self
