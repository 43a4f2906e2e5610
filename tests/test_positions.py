"""Positional schemes: hand-worked buckets, sinusoids, rotary properties, offsets."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from s2s.model.positions import (
    LearnedPositions,
    RelativePositionBias,
    Rotary,
    relative_position_bucket,
    sinusoidal_positions,
)


def buckets(distances, **kwargs):
    return relative_position_bucket(torch.tensor(distances), **kwargs).tolist()


def test_bidirectional_buckets_hand_worked():
    # 8 buckets: 4 per direction; exact for |d| < 2, then log-spaced up to distance 16:
    # bucket(|d|) = 2 + floor(log(|d| / 2) / log(16 / 2) * 2), capped at 3.
    got = buckets(
        [0, -1, -2, -4, -7, -8, -100, 1, 2, 8, 100],
        bidirectional=True,
        num_buckets=8,
        max_distance=16,
    )
    assert got == [0, 1, 2, 2, 3, 3, 3, 5, 6, 7, 7]


def test_causal_buckets_hand_worked():
    # keys after the query (d > 0) all fall in bucket 0; 8 buckets cover d = 0 .. -inf:
    # exact for |d| < 4, then 4 + floor(log(|d| / 4) / log(16 / 4) * 4), capped at 7.
    got = buckets(
        [3, 1, 0, -1, -3, -4, -5, -8, -15, -16, -1000],
        bidirectional=False,
        num_buckets=8,
        max_distance=16,
    )
    assert got == [0, 0, 0, 1, 3, 4, 4, 6, 7, 7, 7]


@given(
    st.integers(-300, 300),
    st.integers(-300, 300),
    st.booleans(),
    st.sampled_from([(8, 16), (32, 128)]),
)
def test_buckets_are_in_range_and_monotone_in_distance(a, b, bidirectional, shape):
    num_buckets, max_distance = shape
    kwargs = dict(bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance)
    near, far = sorted([abs(a), abs(b)])
    for sign in (-1, 1):
        b_near, b_far = buckets([sign * near, sign * far], **kwargs)
        assert 0 <= b_near <= b_far < num_buckets


def test_relative_bias_shape_and_offset_rows():
    bias = RelativePositionBias(8, 16, n_heads=3, bidirectional=False)
    full = bias(5, 5)
    assert full.shape == (1, 3, 5, 5)
    # query 4 decoded alone (offset 4) sees the same bias row as in the full matrix
    torch.testing.assert_close(bias(1, 5, offset=4), full[:, :, 4:5, :])
    # each entry is the table row of its bucket
    bucket = relative_position_bucket(
        torch.tensor(0 - 3), bidirectional=False, num_buckets=8, max_distance=16
    )
    torch.testing.assert_close(full[0, :, 3, 0], bias.weight[bucket])


def test_sinusoidal_values_and_offset():
    table = sinusoidal_positions(6, 8)
    p = torch.arange(6.0)
    torch.testing.assert_close(table[:, 0], torch.sin(p))
    torch.testing.assert_close(table[:, 1], torch.cos(p))
    torch.testing.assert_close(table[:, 2], torch.sin(p / 10000 ** (2 / 8)))
    torch.testing.assert_close(table[:, 7], torch.cos(p / 10000 ** (6 / 8)))
    torch.testing.assert_close(sinusoidal_positions(2, 8, offset=4), table[4:6])
    assert sinusoidal_positions(3, 7).shape == (3, 7)  # odd widths work


def test_learned_positions_offset_and_limit():
    table = LearnedPositions(10, 4)
    torch.testing.assert_close(table(3, offset=2), table.weight[2:5])
    with pytest.raises(ValueError, match="max_positions=10"):
        table(4, offset=7)


def test_rotary_preserves_norm_and_depends_only_on_relative_position():
    gen = torch.Generator().manual_seed(0)
    rotary = Rotary(head_dim=8, base=10000.0)
    q = torch.randn(1, 1, 1, 8, generator=gen)
    k = torch.randn(1, 1, 1, 8, generator=gen)
    angles = rotary(20)

    def at(x, position):
        one = type(angles)(angles.cos[position : position + 1], angles.sin[position : position + 1])
        return one.rotate(x)

    torch.testing.assert_close(at(q, 7).norm(), q.norm())
    score = (at(q, 5) * at(k, 2)).sum()
    torch.testing.assert_close((at(q, 15) * at(k, 12)).sum(), score)  # same distance 3
    assert not torch.allclose((at(q, 15) * at(k, 11)).sum(), score)  # distance 4 differs
    torch.testing.assert_close(at(q, 0), q)  # position 0 is the identity


def test_rotary_offset_matches_full_span():
    rotary = Rotary(head_dim=6, base=100.0)
    full, tail = rotary(9), rotary(2, offset=7)
    torch.testing.assert_close(tail.cos, full.cos[7:])
    torch.testing.assert_close(tail.sin, full.sin[7:])
    # first frequency is 1 rad per position
    torch.testing.assert_close(full.cos[3, 0], torch.tensor(math.cos(3.0)))


def test_rotary_equals_complex_multiplication():
    """RoPE as Su et al. 2021 (Sec. 3.2, eq. 13) write it: pair i of a head, here
    (x_i, x_{i + Dh/2}) in the rotate-half layout, is the complex number x_i + j x_{i + Dh/2},
    multiplied by exp(j * p * theta_i) with theta_i = base^(-2i / Dh). Computed in complex128,
    independently of the module's cos / sin tables."""
    head_dim, base, offset, length = 8, 500.0, 3, 5
    x = torch.randn(2, 3, length, head_dim, generator=torch.Generator().manual_seed(1))
    half = head_dim // 2
    z = torch.complex(x[..., :half].double(), x[..., half:].double())  # (B, H, T, Dh/2)
    theta = base ** (-2.0 * torch.arange(half, dtype=torch.float64) / head_dim)  # (Dh/2,)
    p = torch.arange(offset, offset + length, dtype=torch.float64)  # (T,)
    turned = z * torch.polar(torch.ones(length, half, dtype=torch.float64), p[:, None] * theta)
    expected = torch.cat((turned.real, turned.imag), dim=-1).float()  # (B, H, T, Dh)
    got = Rotary(head_dim, base)(length, offset).rotate(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_learned_positions_use_every_row_and_name_the_first_missing_one():
    table = LearnedPositions(8, 4)
    torch.testing.assert_close(table(8), table.weight)  # positions 0 .. 7: all 8 rows
    torch.testing.assert_close(table(3, offset=5), table.weight[5:])
    with pytest.raises(ValueError, match=r"^position 8 is beyond model.max_positions=8$"):
        table(9)
    with pytest.raises(ValueError, match=r"^position 9 is beyond model.max_positions=8$"):
        table(4, offset=6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_position_tables_come_in_the_asked_dtype(dtype):
    """Tables are computed in float32 and returned in the compute dtype (an activation dtype
    mismatch would otherwise upcast every layer's q / k)."""
    table = sinusoidal_positions(5, 8, dtype=dtype)
    assert table.dtype == dtype
    torch.testing.assert_close(table.float(), sinusoidal_positions(5, 8), atol=1e-2, rtol=1e-2)
    angles = Rotary(8, 10000.0)(5, dtype=dtype)
    assert angles.cos.dtype == dtype and angles.sin.dtype == dtype
