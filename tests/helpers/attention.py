"""Attention test helpers shared by the plain model's tests and the kernels' tests."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest
import torch

from s2s.model.attention import AttentionMask


def randn(*shape, seed=0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).requires_grad_(requires_grad)


def assert_dropout_of_the_probabilities(attend: Callable, dropout: Callable) -> None:
    """`attend(..., backend="math", dropout=0.25)` equals `dropout(softmax(scores)) @ v`, with
    the mask `dropout(probs, p, training=True)` draws for the same seed, and so do gradients."""
    q = randn(2, 3, 5, 8, seed=1, requires_grad=True)  # (B, H, T, Dh)
    k, v = (randn(2, 3, 7, 8, seed=s, requires_grad=True) for s in (2, 3))  # (B, H, S, Dh)
    bias = randn(1, 3, 5, 7, seed=4)
    torch.manual_seed(11)
    out = attend(q, k, v, AttentionMask(bias), scale=0.5, dropout=0.25, backend="math")
    torch.manual_seed(11)
    probs = torch.softmax(q @ k.transpose(-1, -2) * 0.5 + bias, dim=-1)  # (B, H, T, S)
    dropped = dropout(probs, 0.25, training=True)
    assert (dropped == 0).any() and not torch.equal(dropped, probs)  # it does drop
    expected = dropped @ v
    torch.testing.assert_close(out, expected)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    expected_grads = torch.autograd.grad(expected.square().sum(), (q, k, v))
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want)


@contextlib.contextmanager
def recorded_sdpa() -> Iterator[list[tuple[torch.Size, torch.Size, torch.Tensor | None]]]:
    """Within it, every call of torch's `scaled_dot_product_attention` still runs and appends
    (q's shape, k's shape, attn_mask) to the list it yields."""
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, **kwargs):
        calls.append((q.shape, k.shape, attn_mask))
        return real(q, k, v, attn_mask=attn_mask, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
        yield calls
