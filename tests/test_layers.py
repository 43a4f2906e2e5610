"""Norms, feed-forward and encoder/decoder layers."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from helpers.model import tiny_config

from s2s.model.attention import AttentionMask, build_mask
from s2s.model.feedforward import FeedForward, activate
from s2s.model.layers import DecoderLayer, EncoderLayer
from s2s.model.norms import LayerNorm, RMSNorm


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def layernorm_by_hand(x, weight, bias, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def rmsnorm_by_hand(x, weight, eps):
    return x / torch.sqrt((x**2).mean(-1, keepdim=True) + eps) * weight


# float32 runs torch's fused kernels, bfloat16 the explicit upcasting math: both must follow
# the definition (bfloat16 within its rounding).
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layernorm_follows_its_definition(dtype):
    norm = LayerNorm(8, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(randn(8, seed=1))
        norm.bias.copy_(randn(8, seed=2))
    x = (randn(3, 4, 8) * 5 + 2).to(dtype)
    expected = layernorm_by_hand(x.double(), norm.weight.double(), norm.bias.double(), 1e-5)
    y = norm(x)
    assert y.dtype == (dtype if dtype == torch.float32 else torch.float32)  # fp32 weight wins
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=0.05, rtol=0.02)
    torch.testing.assert_close(y.double(), expected, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_hand_worked_and_follows_its_definition(dtype):
    norm = RMSNorm(2, eps=0.0)
    # rms of (3, 4) is sqrt(12.5)
    y = norm(torch.tensor([3.0, 4.0], dtype=dtype)).float()
    torch.testing.assert_close(y, torch.tensor([3.0, 4.0]) / 12.5**0.5, atol=1e-2, rtol=1e-2)
    norm = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(randn(8, seed=1))
    x = (randn(3, 4, 8) * 5 + 2).to(dtype)  # no mean subtraction: the offset matters
    expected = rmsnorm_by_hand(x.double(), norm.weight.double(), 1e-6)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=0.05, rtol=0.02)
    torch.testing.assert_close(norm(x).double(), expected, **tol)


def test_fused_rmsnorm_gradients_equal_the_explicit_math():
    norm = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(randn(8, seed=1))
    x = (randn(3, 4, 8) * 5 + 2).requires_grad_()
    norm(x).pow(2).sum().backward()
    fused = (x.grad.clone(), norm.weight.grad.clone())
    x.grad, norm.weight.grad = None, None
    rmsnorm_by_hand(x, norm.weight, 1e-6).pow(2).sum().backward()
    torch.testing.assert_close(fused, (x.grad, norm.weight.grad))


@pytest.mark.parametrize("d_model", [8, 100, 512])
def test_rmsnorm_gives_the_bits_of_t5s_formula(d_model):
    # sum / D as `mean` computes it on CPU: the same float32 bits as T5's (and transformers')
    # x * rsqrt(x.pow(2).mean(-1) + eps) * weight, which parity with transformers relies on
    norm = RMSNorm(d_model, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(randn(d_model, seed=1))
    x = randn(3, 5, d_model) * 3 + 1
    t5 = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    assert torch.equal(norm(x), t5)


@pytest.mark.parametrize("norm_cls", [LayerNorm, RMSNorm])
def test_norms_without_autograd_equal_the_math(norm_cls):
    # without autograd, float32 LayerNorm takes torch's fused kernel (s2s.model.norms)
    norm = norm_cls(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(randn(8, seed=1))
    x = randn(3, 4, 8) * 5 + 2
    with_grad = norm(x)
    assert with_grad.requires_grad
    with torch.inference_mode():
        without = norm(x)
    if norm_cls is RMSNorm:
        assert torch.equal(without, with_grad)  # the same ops either way
    else:
        torch.testing.assert_close(without, with_grad, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("norm_cls", [LayerNorm, RMSNorm])
def test_norms_keep_half_dtype(norm_cls):
    x = randn(2, 8).to(torch.bfloat16) * 100
    y = norm_cls(8, eps=1e-6).to(torch.bfloat16)(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()


ACTIVATIONS = {
    "relu": torch.relu,
    "gelu": lambda x: 0.5 * x * (1 + torch.erf(x / 2**0.5)),
    "gelu_tanh": lambda x: (
        0.5 * x * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (x + 0.044715 * x**3)))
    ),
    "silu": lambda x: x * torch.sigmoid(x),
}


@pytest.mark.parametrize(
    ("activation", "gated"), list(itertools.product(ACTIVATIONS, [False, True]))
)
def test_feedforward_matches_formula(activation, gated):
    torch.manual_seed(0)
    ffn = FeedForward(8, 12, activation=activation, gated=gated, bias=True, dropout=0.0)
    x = randn(2, 3, 8)
    act = ACTIVATIONS[activation]
    h = x @ ffn.wi.weight.T + ffn.wi.bias
    if gated:  # rows [0, F) are the gate, rows [F, 2F) the linear "up" branch
        h = act(h[..., :12]) * h[..., 12:]
    else:
        h = act(h)
    expected = h @ ffn.wo.weight.T + ffn.wo.bias
    torch.testing.assert_close(ffn(x), expected, atol=1e-5, rtol=1e-5)
    assert ffn.wi.weight.shape == ((24 if gated else 12), 8)


@pytest.mark.parametrize("bias", [False, True])
def test_feedforward_dropout_is_dropout_of_the_inner_activation(bias):
    """In training: wo(dropout(act(wi x))) with the mask of torch's dropout for the same
    seed, and its gradients; in eval mode no dropout."""
    torch.manual_seed(0)
    ffn = FeedForward(8, 12, activation="relu", gated=False, bias=bias, dropout=0.3).train()
    x = randn(4, 5, 8).requires_grad_(True)
    torch.manual_seed(5)
    out = ffn(x)
    torch.manual_seed(5)
    dropped = F.dropout(torch.relu(F.linear(x, ffn.wi.weight, ffn.wi.bias)), 0.3, training=True)
    assert (dropped == 0).sum() > (torch.relu(ffn.wi(x)) == 0).sum()  # it does drop
    expected = F.linear(dropped, ffn.wo.weight, ffn.wo.bias)
    torch.testing.assert_close(out, expected)
    params = [x, *ffn.parameters()]
    grads = torch.autograd.grad(out.square().sum(), params)
    for got, want in zip(grads, torch.autograd.grad(expected.square().sum(), params), strict=True):
        torch.testing.assert_close(got, want)
    plain = F.linear(torch.relu(ffn.wi(x)), ffn.wo.weight, ffn.wo.bias)
    torch.testing.assert_close(ffn.eval()(x), plain)  # no dropout in eval mode


def test_feedforward_rejects_unknown_activation():
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):
        FeedForward(8, 12, activation="tanh", gated=False, bias=False, dropout=0.0)
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):  # called directly
        activate(torch.zeros(2), "tanh")


def _run_layers(config, seed=0):
    torch.manual_seed(seed)
    enc, dec = EncoderLayer(config), DecoderLayer(config)
    x, memory = randn(2, 5, 32, seed=1), randn(2, 6, 32, seed=2)
    causal = build_mask(None, q_len=5, k_len=5, causal=True)
    y = dec(x, causal, enc(memory, AttentionMask(), None), AttentionMask(), None)
    return enc, dec, y


@pytest.mark.parametrize(
    ("norm", "norm_position", "activation", "gated"),
    [
        *itertools.product(["layernorm", "rmsnorm"], ["pre", "post"], ["relu"], [False]),
        *itertools.product(["rmsnorm"], ["pre"], ACTIVATIONS, [True, False]),
    ],
)
def test_every_norm_and_activation_runs_forward_and_backward(
    norm, norm_position, activation, gated
):
    config = tiny_config(
        norm=norm,
        norm_position=norm_position,
        activation=activation,
        gated_ffn=gated,
        attention_bias=True,
        ffn_bias=True,
    )
    enc, dec, y = _run_layers(config)
    assert y.shape == (2, 5, 32) and torch.isfinite(y).all()
    y.square().mean().backward()
    for name, p in [*enc.named_parameters(), *dec.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_post_norm_outputs_are_normalised_and_pre_norm_are_not():
    _, _, post = _run_layers(tiny_config(norm="layernorm", norm_position="post"))
    torch.testing.assert_close(post.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(post.var(-1, unbiased=False), torch.ones(2, 5), atol=1e-3, rtol=0)
    _, _, pre = _run_layers(tiny_config(norm="layernorm", norm_position="pre"))
    assert pre.mean(-1).abs().max() > 1e-2  # the residual stream itself is not normalised


def test_layer_dropout_active_only_in_training_and_zero_is_identity():
    config = tiny_config(dropout=0.3, attention_dropout=0.3, activation_dropout=0.3)
    enc = EncoderLayer(config)
    x = randn(2, 5, 32)
    enc.train()
    assert not torch.allclose(enc(x, AttentionMask(), None), enc(x, AttentionMask(), None))
    enc.eval()
    torch.testing.assert_close(enc(x, AttentionMask(), None), enc(x, AttentionMask(), None))
    torch.manual_seed(0)
    no_dropout = EncoderLayer(tiny_config(dropout=0.0)).train()
    torch.testing.assert_close(
        no_dropout(x, AttentionMask(), None), no_dropout.eval()(x, AttentionMask(), None)
    )
