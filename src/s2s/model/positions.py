"""Positional schemes: learned absolute, sinusoidal, T5 relative bias, rotary (RoPE).

Notation: B batch, T query length, S key length, D model dim, H heads, Dh head dim.
`offset` is the absolute position of the first query (non-zero when decoding step by step
with a cache), so query i sits at position offset + i and key j at position j.

Absolute schemes return a (T, D) table added to the token embeddings; the relative bias
returns an additive (1, H, T, S) score bias; rotary returns angles that rotate q and k.
Each stack computes its positions once per forward pass and shares them across layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


class LearnedPositions(nn.Module):
    """A learned (max_positions, D) table (BART; Vaswani et al. 2017, Sec. 3.5)."""

    def __init__(self, max_positions: int, d_model: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(max_positions, d_model))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, length: int, offset: int = 0) -> Tensor:
        """Rows offset .. offset + length - 1, shape (T, D)."""
        end = offset + length
        if end > self.weight.shape[0]:
            raise ValueError(
                f"position {end - 1} is beyond model.max_positions={self.weight.shape[0]}"
            )
        return self.weight[offset:end]


def sinusoidal_positions(
    length: int, d_model: int, offset: int = 0, *, device=None, dtype=torch.float32
) -> Tensor:
    """Fixed sinusoids, shape (T, D), computed on the fly (no length limit).

    Vaswani et al. 2017, Sec. 3.5: PE[p, 2i] = sin(p / 10000^(2i/D)), PE[p, 2i+1] = cos(...).
    """
    position = torch.arange(offset, offset + length, device=device, dtype=torch.float32)
    inv_freq = torch.exp(
        torch.arange(0, d_model, 2, device=device, dtype=torch.float32)
        * (-math.log(10000.0) / d_model)
    )
    angles = position[:, None] * inv_freq[None, :]  # (T, ceil(D/2))
    table = torch.zeros(length, d_model, device=device, dtype=torch.float32)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : d_model // 2])
    return table.to(dtype)


def relative_position_bucket(
    relative_position: Tensor, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> Tensor:
    """Map key_pos - query_pos to a bucket id in [0, num_buckets).

    T5 relative attention (Raffel et al. 2020, Sec. 2.1), bucketing as in Mesh TensorFlow:
    bidirectional stacks give half the buckets to keys after the query; the decoder (causal)
    only sees keys at or before the query. Within each half, distances below half the buckets
    get their own bucket and larger ones share logarithmically wider buckets up to
    max_distance, beyond which all distances share the last bucket.
    """
    bucket = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # log-spaced buckets for max_exact <= distance < max_distance; clamp(min=1) avoids log(0)
    # on the small entries, which torch.where discards anyway.
    log_ratio = torch.log(distance.clamp(min=1).float() / max_exact) / math.log(
        max_distance / max_exact
    )
    large = max_exact + (log_ratio * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return bucket + torch.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
    """T5 relative position bias: one learned scalar per (bucket, head), added to scores.

    Only one table exists per stack (T5 gives it to the first layer and shares the bias).
    """

    def __init__(self, num_buckets: int, max_distance: int, n_heads: int, bidirectional: bool):
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.bidirectional = bidirectional
        self.weight = nn.Parameter(torch.empty(num_buckets, n_heads))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, q_len: int, k_len: int, offset: int = 0) -> Tensor:
        """Additive bias of shape (1, H, T, S) for queries at offset .. offset + T - 1."""
        device = self.weight.device
        query = torch.arange(offset, offset + q_len, device=device)[:, None]  # (T, 1)
        key = torch.arange(k_len, device=device)[None, :]  # (1, S)
        buckets = relative_position_bucket(
            key - query,
            bidirectional=self.bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )  # (T, S)
        bias = self.weight[buckets]  # (T, S, H)
        return bias.permute(2, 0, 1).unsqueeze(0)  # (1, H, T, S)


@dataclass(frozen=True)
class RotaryAngles:
    """cos / sin of the rotary angles for T positions, each (T, Dh)."""

    cos: Tensor
    sin: Tensor

    def rotate(self, x: Tensor) -> Tensor:
        """Rotate x of shape (B, H, T, Dh) by its positions (rotate-half layout).

        RoPE (Su et al. 2021): pairs (x_i, x_{i + Dh/2}) are rotated by angle p * theta_i,
        so q.k depends only on the relative position of query and key.
        """
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        rotated = torch.cat((-x2, x1), dim=-1)  # (B, H, T, Dh)
        return x * self.cos + rotated * self.sin


class Rotary(nn.Module):
    """Computes `RotaryAngles` for a span of positions; holds no parameters."""

    def __init__(self, head_dim: int, base: float) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.base = base

    def forward(self, length: int, offset: int = 0, *, device=None, dtype=torch.float32):
        exponent = torch.arange(0, self.head_dim, 2, device=device, dtype=torch.float32)
        inv_freq = self.base ** (-exponent / self.head_dim)  # (Dh/2,)
        position = torch.arange(offset, offset + length, device=device, dtype=torch.float32)
        angles = position[:, None] * inv_freq[None, :]  # (T, Dh/2)
        angles = torch.cat((angles, angles), dim=-1)  # (T, Dh)
        return RotaryAngles(cos=angles.cos().to(dtype), sin=angles.sin().to(dtype))
