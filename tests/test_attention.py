"""Attention: mask building by hand, math == SDPA, fused projections, caches."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers.attention import assert_dropout_of_the_probabilities, randn, recorded_sdpa

from s2s.model.attention import (
    PADDING_PENALTY,
    AttentionMask,
    CrossAttention,
    SelfAttention,
    attend,
    attention_weights,
    build_mask,
    mask_dtype,
    sdpa,
    widened_head_size,
    with_key_padding,
)
from s2s.model.cache import LayerCache

LOWEST = torch.finfo(torch.float32).min


def test_padding_mask_becomes_key_mask():
    padding = torch.tensor([[1, 1, 0], [1, 1, 1]])
    mask = build_mask(padding, q_len=2, k_len=3, causal=False)
    assert mask.tensor.dtype == torch.bool and mask.tensor.shape == (2, 1, 1, 3)
    assert mask.tensor[:, 0, 0].tolist() == [[True, True, False], [True, True, True]]
    assert not mask.is_causal


def test_no_padding_and_no_bias_means_no_mask():
    assert build_mask(None, q_len=4, k_len=4, causal=False) == AttentionMask()
    assert build_mask(None, q_len=4, k_len=4, causal=True) == AttentionMask(is_causal=True)
    assert build_mask(None, q_len=1, k_len=6, causal=True) == AttentionMask()  # one new query


def test_a_given_padding_mask_is_applied_without_reading_it():
    """An all-real mask is applied as given: deciding it is all real would read it back from
    the device (a host-device sync); callers that know pass None."""
    mask = build_mask(torch.ones(2, 4), q_len=4, k_len=4, causal=False)
    assert mask.tensor.shape == (2, 1, 1, 4) and bool(mask.tensor.all())


def test_causal_mask_with_cached_prefix_hand_worked():
    # 2 new queries at positions 2 and 3 over 4 keys
    mask = build_mask(None, q_len=2, k_len=4, causal=True)
    assert mask.tensor[0, 0].tolist() == [[True, True, True, False], [True, True, True, True]]


def test_bias_with_padding_and_causality_is_filled_with_lowest():
    bias = torch.arange(9.0).view(1, 1, 3, 3)
    mask = build_mask(torch.tensor([[1, 1, 0]]), q_len=3, k_len=3, causal=True, bias=bias)
    # causality folded into the (1, H, T, S) bias, the key padding kept beside it
    causal = torch.tensor([[0.0, LOWEST, LOWEST], [3.0, 4.0, LOWEST], [6.0, 7.0, 8.0]])
    torch.testing.assert_close(mask.tensor[0, 0], causal)
    assert mask.padding.tolist() == [[[[True, True, False]]]]
    # and combined, for torch's SDPA, which takes one mask
    expected = torch.tensor([[0.0, LOWEST, LOWEST], [3.0, 4.0, LOWEST], [6.0, 7.0, LOWEST]])
    torch.testing.assert_close(mask.combined()[0, 0], expected)


def test_bias_with_padding_stays_one_per_head_in_the_compute_dtype():
    """(B, H, T, S) = (8, 2, 4, 4): the bias stays (1, H, T, S), the padding (B, 1, 1, S), and
    the bias is made in the dtype the scores are computed in, its fill finite there (a float32
    minimum cast to bf16 is -inf)."""
    bias = randn(1, 2, 4, 4)
    padding = torch.ones(8, 4, dtype=torch.bool)
    padding[1:, 3] = False
    for causal in (False, True):
        mask = build_mask(padding, q_len=4, k_len=4, causal=causal, bias=bias, dtype=torch.bfloat16)
        assert mask.tensor.shape == (1, 2, 4, 4) and mask.tensor.dtype == torch.bfloat16
        assert mask.padding.shape == (8, 1, 1, 4)
        assert bool(mask.tensor.isfinite().all()) and bool(mask.combined().isfinite().all())
    assert float(mask.tensor[0, 0, 0, 3]) == torch.finfo(torch.bfloat16).min  # causal fill


def test_attention_weights_come_back_in_the_inputs_dtype():
    """The softmax runs in float32 and the weights return in q's dtype (bf16 here)."""
    q, k = randn(1, 2, 3, 8, seed=1).bfloat16(), randn(1, 2, 4, 8, seed=2).bfloat16()
    weights = attention_weights(q, k, AttentionMask(), scale=1.0)
    assert weights.dtype == torch.bfloat16
    torch.testing.assert_close(weights.float().sum(-1), torch.ones(1, 2, 3), atol=1e-2, rtol=0)


def test_the_attention_backend_is_checked_when_built():
    """An attention module keeps the backend it was built with ("sdpa" by default), and an
    unknown one is refused there, naming the setting and the choices."""
    assert SelfAttention(16, 2, 8, bias=False, scale=True, dropout=0.0).backend == "sdpa"
    cross = CrossAttention(16, 2, 8, bias=False, scale=True, dropout=0.0, backend="math")
    assert cross.backend == "math"
    with pytest.raises(ValueError) as err:
        SelfAttention(16, 2, 8, bias=False, scale=True, dropout=0.0, backend="flash")
    assert str(err.value) == "attention_backend='flash' must be one of ['sdpa', 'math']"


def test_math_attention_hand_worked():
    q = torch.tensor([[[[1.0, 0.0]]]])  # (B=1, H=1, T=1, Dh=2)
    k = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    v = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    out = attend(q, k, v, AttentionMask(), scale=1.0, dropout=0.0, backend="math")
    p = math.e / (math.e + 1)  # softmax([1, 0])[0]
    torch.testing.assert_close(
        out[0, 0, 0], torch.tensor([p * 1 + (1 - p) * 3, p * 2 + (1 - p) * 4])
    )
    masked = AttentionMask(torch.tensor([True, False]).view(1, 1, 1, 2))
    out = attend(q, k, v, masked, scale=1.0, dropout=0.0, backend="math")
    torch.testing.assert_close(out[0, 0, 0], v[0, 0, 0])


CASES = ["none", "padding", "causal", "causal_prefix", "bias_padding", "frozen_bias_padding"]


@pytest.mark.parametrize("case", CASES)
def test_sdpa_equals_math_values_and_gradients(case):
    b, h, t, s, dh = 2, 3, 5, 5, 8
    padding = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    bias = None
    if case.endswith("bias_padding"):  # a frozen bias keeps SDPA on its fused CPU kernel
        bias = randn(1, h, t, s, seed=4, requires_grad=not case.startswith("frozen"))
    if case == "causal_prefix":
        t = 2  # queries 3 and 4 of 5 keys, as after a cached prefix
    kwargs = {
        "none": dict(padding_mask=None, causal=False),
        "padding": dict(padding_mask=padding, causal=False),
        "causal": dict(padding_mask=None, causal=True),
        "causal_prefix": dict(padding_mask=padding, causal=True),
        "bias_padding": dict(padding_mask=padding, causal=True, bias=bias),
        "frozen_bias_padding": dict(padding_mask=padding, causal=True, bias=bias),
    }[case]
    results = {}
    for backend in ("sdpa", "math"):
        q = randn(b, h, t, dh, seed=1, requires_grad=True)
        k = randn(b, h, s, dh, seed=2, requires_grad=True)
        v = randn(b, h, s, dh, seed=3, requires_grad=True)
        if bias is not None and bias.requires_grad:
            bias.grad = None
        mask = build_mask(q_len=t, k_len=s, **kwargs)
        out = attend(q, k, v, mask, scale=dh**-0.5, dropout=0.0, backend=backend)
        (out * randn(*out.shape, seed=5)).sum().backward()
        grads = [q.grad, k.grad, v.grad]
        if bias is not None and bias.requires_grad:
            grads.append(bias.grad.clone())
        results[backend] = [out.detach(), *grads]
    for fused, math_ in zip(results["sdpa"], results["math"], strict=True):
        torch.testing.assert_close(fused, math_, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dh", [7, 8, 20])
@pytest.mark.parametrize("scaled", [True, False])
@pytest.mark.parametrize("pad_values", [True, False])
def test_key_padding_carried_by_the_keys_equals_math(dh, scaled, pad_values):
    """SDPA with the padding in extra key columns (`with_key_padding`: q gets a column of a,
    k one of -a on padded keys, both zero-padded to a multiple of 8) gives the math path's
    output and gradients (q, k, v and the bias) for a causal bias over padded keys, at head
    dims below, at and above a multiple of 8, scaled (Dh^-1/2) or not (T5), and with values
    widened (CPU) or not (CUDA's memory-efficient kernel)."""
    b, h, t, s = 3, 2, 6, 6
    scale = dh**-0.5 if scaled else 1.0
    padding = torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0]])
    bias = randn(1, h, t, s, seed=4, requires_grad=True)
    results = {}
    for path in ("keys", "math"):
        q = randn(b, h, t, dh, seed=1, requires_grad=True)
        k, v = (randn(b, h, s, dh, seed=seed, requires_grad=True) for seed in (2, 3))
        bias.grad = None
        mask = build_mask(padding, q_len=t, k_len=s, causal=True, bias=bias)
        if path == "keys":
            qx, kx, vx = with_key_padding(q, k, v, mask, scale, pad_values=pad_values)
            assert qx.shape[-1] == kx.shape[-1] == widened_head_size(dh)
            assert vx.shape[-1] == (qx.shape[-1] if pad_values else dh)
            out = F.scaled_dot_product_attention(qx, kx, vx, attn_mask=mask.tensor, scale=scale)
            out = out[..., :dh]
        else:
            out = attend(q, k, v, mask, scale=scale, dropout=0.0, backend="math")
        (out * randn(*out.shape, seed=5)).sum().backward()
        results[path] = [out.detach(), q.grad, k.grad, v.grad, bias.grad.clone()]
    for name, keys, math_ in zip(["out", "q", "k", "v", "bias"], *results.values(), strict=True):
        torch.testing.assert_close(keys, math_, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("scale", [1.0, 8**-0.5])
def test_the_key_columns_cost_a_padded_key_exactly_the_penalty(scale):
    """scale * q'.k' - scale * q.k is 0 on real keys and -PADDING_PENALTY on padded ones, for
    the scale asked (the columns are made per width, scale and dtype, then shared)."""
    padding = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    mask = build_mask(padding, q_len=3, k_len=4, causal=False, bias=randn(1, 2, 3, 4))
    q, k, v = randn(2, 2, 3, 8, seed=1), randn(2, 2, 4, 8, seed=2), randn(2, 2, 4, 8, seed=3)
    qx, kx, vx = with_key_padding(q, k, v, mask, scale, pad_values=True)
    extra = scale * (qx @ kx.transpose(-1, -2)) - scale * (q @ k.transpose(-1, -2))
    expected = torch.zeros(2, 2, 3, 4)
    expected[0, :, :, 2:] = -PADDING_PENALTY
    torch.testing.assert_close(extra, expected, atol=1e-2, rtol=1e-6)
    assert torch.equal(vx[..., :8], v) and not vx[..., 8:].any()
    assert mask.key_columns(8, scale, torch.float32) is mask.key_columns(8, scale, torch.float32)
    assert not torch.equal(
        mask.key_columns(8, 1.0, torch.float32), mask.key_columns(8, 0.25, torch.float32)
    )


@pytest.mark.parametrize(
    ("dh", "t", "s", "keys"),
    [
        (8, 32, 32, False),
        (8, 33, 33, True),
        (8, 1, 300, False),
        (8, 30, 60, True),
        (7, 16, 16, False),  # widened to 8 columns: 16 * 16 <= 32 * 8
        (7, 17, 17, True),  # 17 * 17 > 34 * 8 (Dh + 8 = 15 would still pick the mask)
    ],
)
def test_sdpa_carries_the_padding_in_the_keys_only_where_the_mask_is_bigger(dh, t, s, keys):
    """The documented rule: the combined (B, H, T, S) mask while T * S <= (T + S) * W, W the
    widened head size (Dh + 8 at Dh = 8; 8 at Dh = 7), so one query of cached decoding never
    copies its keys; else widened q and k with the (1, H, T, S) bias alone; the same numbers
    either way."""
    assert widened_head_size(8) == 16 and widened_head_size(7) == 8 and widened_head_size(60) == 64
    padding = torch.ones(2, s, dtype=torch.long)
    padding[1, s // 2 :] = 0
    mask = build_mask(padding, q_len=t, k_len=s, causal=False, bias=randn(1, 2, t, s, seed=4))
    q, k, v = randn(2, 2, t, dh, seed=1), randn(2, 2, s, dh, seed=2), randn(2, 2, s, dh, seed=3)
    with recorded_sdpa() as calls:
        out = sdpa(q, k, v, mask, scale=1.0, dropout=0.0)
    called = [(q_shape[-1], mask.shape) for q_shape, _, mask in calls]
    wide = widened_head_size(dh)
    assert called == [(wide, (1, 2, t, s))] if keys else called == [(dh, (2, 2, t, s))]
    expected = attend(q, k, v, mask, scale=1.0, dropout=0.0, backend="math")
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_the_combined_mask_is_made_once_per_mask():
    """Where SDPA gets the combined mask (cached decoding), every layer shares one tensor."""
    padding = torch.tensor([[1, 1, 0]])
    mask = build_mask(padding, q_len=1, k_len=3, causal=False, bias=randn(1, 2, 1, 3))
    assert mask.combined() is mask.combined()
    assert mask.combined().shape == (1, 2, 1, 3) and float(mask.combined()[0, 0, 0, 2]) == LOWEST


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_key_padding_in_the_keys_holds_in_half_precision(dtype):
    """In bf16 and fp16 the penalty stays finite and exact enough: padded keys get no weight
    (the output equals attention over the real keys alone) and nothing overflows, with the
    causal fill at the dtype's minimum in the same scores."""
    b, h, t, s, dh = 2, 2, 40, 40, 8
    padding = torch.ones(b, s, dtype=torch.long)
    padding[1, 25:] = 0
    bias = randn(1, h, t, s, seed=4).to(dtype)
    mask = build_mask(padding, q_len=t, k_len=s, causal=True, bias=bias, dtype=dtype)
    q, k, v = (randn(b, h, n, dh, seed=seed).to(dtype) for seed, n in ((1, t), (2, s), (3, s)))
    out = sdpa(q, k, v, mask, scale=1.0, dropout=0.0)  # (B, H, T, Dh), the keys path
    assert out.shape == (b, h, t, dh) and bool(out.isfinite().all())
    # row 1 over its 25 real keys alone, by the math path in float32
    alone = build_mask(None, q_len=t, k_len=25, causal=False, bias=mask.tensor[..., :25].float())
    expected = attend(
        q[1:].float(),
        k[1:, :, :25].float(),
        v[1:, :, :25].float(),
        alone,
        scale=1.0,
        dropout=0.0,
        backend="math",
    )
    torch.testing.assert_close(out[1:].float(), expected, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("keys", [False, True], ids=["one mask", "padding in the keys"])
def test_sdpa_applies_the_attention_dropout(keys):
    """The SDPA path (the GPU's) drops attention probabilities when asked: outputs change
    with the seed, and averaged over seeds they approach the undropped output (dropout is
    unbiased); with p = 0 they are the undropped output exactly."""
    t = s = 40 if keys else 5
    padding = torch.ones(2, s, dtype=torch.long)
    padding[1, s // 2 :] = 0
    mask = build_mask(padding, q_len=t, k_len=s, causal=False, bias=randn(1, 2, t, s, seed=4))
    q, k, v = randn(2, 2, t, 8, seed=1), randn(2, 2, s, 8, seed=2), randn(2, 2, s, 8, seed=3)
    plain = sdpa(q, k, v, mask, scale=1.0, dropout=0.0)
    runs = []
    for seed in range(100):
        torch.manual_seed(seed)
        runs.append(sdpa(q, k, v, mask, scale=1.0, dropout=0.5))
    assert not torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], plain)
    # one run is off by ~100% of the output's size; the mean of 100 by ~10% (1 / sqrt(100));
    # an unscaled (biased) dropout would stay ~50% off
    error = (torch.stack(runs).mean(0) - plain).abs().mean() / plain.abs().mean()
    assert error < 0.2


def test_attention_dropout_is_dropout_of_the_probabilities():
    """The math path drops attention probabilities: same function, same mask (drawn from the
    global generator like torch's dropout), same gradients."""
    assert_dropout_of_the_probabilities(attend, F.dropout)


def _separate_projection_reference(attn: SelfAttention, x, scale):
    """Self-attention with q, k, v taken as slices of the fused matrix, heads looped."""
    d = attn.out.in_features
    wq, wk, wv = attn.qkv.weight.split(d, dim=0)
    q, k, v = x @ wq.T, x @ wk.T, x @ wv.T  # (B, T, H * Dh)
    heads = []
    for i in range(attn.n_heads):
        cols = slice(i * d // attn.n_heads, (i + 1) * d // attn.n_heads)
        scores = q[..., cols] @ k[..., cols].transpose(-1, -2) * scale
        heads.append(scores.softmax(-1) @ v[..., cols])
    return torch.cat(heads, dim=-1) @ attn.out.weight.T


@pytest.mark.parametrize("scale", [True, False])
def test_fused_self_attention_matches_per_head_reference(scale):
    torch.manual_seed(0)
    attn = SelfAttention(16, 4, 4, bias=False, scale=scale, dropout=0.0, backend="sdpa")
    x = randn(2, 5, 16)
    expected = _separate_projection_reference(attn, x, 0.5 if scale else 1.0)
    torch.testing.assert_close(attn(x, AttentionMask()), expected, atol=1e-5, rtol=1e-5)


def test_padded_keys_do_not_change_real_outputs():
    torch.manual_seed(0)
    attn = SelfAttention(16, 2, 8, bias=True, scale=True, dropout=0.0, backend="sdpa")
    padding = torch.tensor([[1, 1, 1, 0, 0]])
    mask = build_mask(padding, q_len=5, k_len=5, causal=False)
    x = randn(1, 5, 16)
    y = x.clone()
    y[:, 3:] = randn(1, 2, 16, seed=9)
    torch.testing.assert_close(attn(x, mask)[:, :3], attn(y, mask)[:, :3])
    assert not torch.allclose(attn(x, AttentionMask())[:, :3], attn(y, AttentionMask())[:, :3])


def test_self_attention_cache_grows_and_matches_full():
    torch.manual_seed(0)
    attn = SelfAttention(16, 2, 8, bias=False, scale=True, dropout=0.0, backend="math")
    x = randn(2, 4, 16)
    full = attn(x, build_mask(None, q_len=4, k_len=4, causal=True))
    cache = LayerCache()
    steps = []
    for i in range(4):
        mask = build_mask(None, q_len=1, k_len=i + 1, causal=True)
        steps.append(attn(x[:, i : i + 1], mask, cache=cache))
        assert cache.self_k.shape == (2, 2, i + 1, 8)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_cross_attention_keys_values_computed_once():
    torch.manual_seed(0)
    attn = CrossAttention(16, 2, 8, bias=True, scale=True, dropout=0.0, backend="sdpa")
    x, memory = randn(2, 1, 16), randn(2, 6, 16, seed=1)
    cache = LayerCache()
    first = attn(x, memory, AttentionMask(), cache=cache)
    k = cache.cross_k
    assert k.shape == (2, 2, 6, 8)
    # a second step ignores the memory argument and reuses the cached keys/values
    again = attn(x, torch.zeros_like(memory), AttentionMask(), cache=cache)
    assert cache.cross_k is k
    torch.testing.assert_close(again, first)
    cache.reorder(torch.tensor([1, 1]))
    torch.testing.assert_close(cache.cross_k[0], k[1])


def test_attention_dropout_only_in_training():
    torch.manual_seed(0)
    attn = SelfAttention(16, 2, 8, bias=False, scale=True, dropout=0.5, backend="math")
    x = randn(2, 5, 16)
    attn.eval()
    torch.testing.assert_close(attn(x, AttentionMask()), attn(x, AttentionMask()))
    attn.train()
    assert not torch.allclose(attn(x, AttentionMask()), attn(x, AttentionMask()))


def test_the_bias_is_made_in_the_dtype_autocast_computes_in():
    x = torch.zeros(2, 3, 4)  # float32 activations, as an embedding gives under autocast
    assert mask_dtype(x) == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert mask_dtype(x) == torch.bfloat16
    assert mask_dtype(torch.zeros(2, device="meta")) == torch.float32  # no autocast there
