"""The norms' fused branch (`F.rms_norm` / `F.layer_norm`, taken on every device but the CPU)
against the math the CPU runs: values, output dtype and gradients, for float32 and bfloat16
inputs; and which branch each device takes (the meta device stands in for CUDA)."""

from __future__ import annotations

import pytest
import torch

from s2s.model import norms
from s2s.model.norms import LayerNorm, RMSNorm

# (input dtype, weight dtype): float32 training, bf16 activations under autocast (float32
# weights), a model cast to bf16 (generate.py dtype=bfloat16)
DTYPES = [
    (torch.float32, torch.float32),
    (torch.bfloat16, torch.float32),
    (torch.bfloat16, torch.bfloat16),
]
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


def _norm(cls, dtype: torch.dtype) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(1)
    norm = cls(16, eps=1e-6)
    with torch.no_grad():
        for p in norm.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return norm.to(dtype)


def _fused(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(norm, RMSNorm):
        return norms.fused_rms_norm(x, norm.weight, norm.eps)
    return norms.fused_layer_norm(x, norm.weight, norm.bias, norm.eps)


def _output_and_grads(forward, norm, x):
    for p in norm.parameters():
        p.grad = None
    x = x.detach().requires_grad_()
    y = forward(x)
    # a loss that weighs every output differently, so each gradient entry is checked
    weights = torch.linspace(-1, 1, y.numel()).reshape(y.shape)
    (y.float() * weights).sum().backward()
    return y, [x.grad, *(p.grad for p in norm.parameters())]


@pytest.mark.parametrize("cls", [RMSNorm, LayerNorm])
@pytest.mark.parametrize(("x_dtype", "w_dtype"), DTYPES, ids=["f32", "bf16-x", "bf16"])
def test_fused_branch_equals_the_math(cls, x_dtype, w_dtype):
    norm = _norm(cls, w_dtype)
    gen = torch.Generator().manual_seed(2)
    x = (torch.randn(3, 5, 16, generator=gen) * 4 + 1).to(x_dtype)  # an offset: RMS != std
    expected, expected_grads = _output_and_grads(norm, norm, x)  # CPU with autograd: the math
    y, grads = _output_and_grads(lambda h: _fused(norm, h), norm, x)
    assert y.dtype == expected.dtype  # float32 whenever either side is float32
    tol = TOL[torch.bfloat16 if torch.bfloat16 in (x_dtype, w_dtype) else torch.float32]
    torch.testing.assert_close(y.float(), expected.float(), **tol)
    if w_dtype == torch.bfloat16:
        # a model cast to bf16 is for generation; its training gradients are not compared:
        # torch's CPU bf16 layer_norm backward gives a bias gradient 3.6% (of its largest
        # entry) off float64, the math 0.5% (CUDA's kernel accumulates in float32)
        return
    for got, want in zip(grads, expected_grads, strict=True):
        assert got.dtype == want.dtype
        scale = want.float().abs().max()  # bf16 gradients: relative to their largest entry
        torch.testing.assert_close(got.float() / scale, want.float() / scale, **tol)


def test_fused_rms_norm_follows_t5s_formula_in_float64():
    # an independent reference: x / sqrt(mean(x^2) + eps) * w (T5's T5LayerNorm) in float64
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 2
    w = torch.linspace(0.5, 2, 16, dtype=torch.float64)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    got = norms.fused_rms_norm(x.float(), w.float(), 1e-6)
    torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    ("cls", "name"), [(RMSNorm, "fused_rms_norm"), (LayerNorm, "fused_layer_norm")]
)
def test_only_the_cpu_keeps_the_math(cls, name, monkeypatch):
    calls = []
    fused = getattr(norms, name)
    monkeypatch.setattr(
        norms, name, lambda *args: calls.append(args[0].device.type) or fused(*args)
    )
    cpu = _norm(cls, torch.float32)
    cpu(torch.ones(2, 16, requires_grad=True))  # with autograd, the CPU runs the math
    assert calls == []
    meta = _norm(cls, torch.float32).to("meta")  # any device but the CPU, as CUDA is
    y = meta(torch.empty(2, 3, 16, device="meta", dtype=torch.bfloat16))
    assert calls == ["meta"] and y.shape == (2, 3, 16) and y.dtype == torch.float32
