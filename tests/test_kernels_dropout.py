"""`s2s.kernels.dropout`: drop rate, scale, gradient, no-op cases, quantised probability."""

from __future__ import annotations

import pytest
import torch

from s2s.kernels.dropout import Dropout, drop_levels, dropout, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_drop_rate_matches_p(p):
    torch.manual_seed(0)
    keep = keep_mask(torch.Size([1000, 1001]), p, device=torch.device("cpu"))
    assert keep.dtype == torch.bool and keep.shape == (1000, 1001)
    # 1e6 draws: the standard error of the rate is below 5e-4
    assert abs((~keep).float().mean().item() - p) < 3e-3


def test_mask_is_independent_of_position():
    # each 64-bit word feeds four neighbours; all four lanes must be unbiased
    torch.manual_seed(1)
    keep = keep_mask(torch.Size([400_000, 4]), 0.3, device=torch.device("cpu"))
    rates = (~keep).float().mean(0)
    assert torch.allclose(rates, torch.full((4,), 0.3), atol=4e-3)


def test_probability_is_quantised_to_16_bits():
    assert drop_levels(0.1) == 6554  # p = 6554 / 65536 = 0.1000061
    assert drop_levels(0.0) == 0
    assert drop_levels(0.99999999) == 2**16 - 1  # never drops everything


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kept_values_scaled_and_gradient_is_the_mask(dtype):
    torch.manual_seed(0)
    x = torch.randn(64, 128).to(dtype).requires_grad_()
    y = dropout(x, 0.25, training=True)
    kept = y != 0
    scale = 2**16 / (2**16 - drop_levels(0.25))
    torch.testing.assert_close(y[kept], (x[kept].float() * scale).to(dtype))
    y.sum().backward()
    expected = torch.where(kept, torch.tensor(scale, dtype=dtype), torch.tensor(0, dtype=dtype))
    torch.testing.assert_close(x.grad, expected)


def test_expectation_is_preserved():
    torch.manual_seed(0)
    y = dropout(torch.ones(2_000_000), 0.1, training=True)
    assert abs(y.mean().item() - 1.0) < 2e-3


def test_eval_and_zero_p_return_the_input():
    x = torch.randn(3, 4)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0, training=True) is x
    module = Dropout(0.5).eval()
    assert module(x) is x


def test_same_seed_same_mask():
    x = torch.randn(50, 50)
    torch.manual_seed(3)
    a = dropout(x, 0.2, training=True)
    torch.manual_seed(3)
    b = dropout(x, 0.2, training=True)
    assert torch.equal(a, b)


def test_bad_probability_is_rejected():
    with pytest.raises(ValueError, match="must be in"):
        Dropout(1.0)


@pytest.mark.slow  # torch.compile
def test_compiles_as_one_graph_with_dynamic_shapes():
    torch.compiler.reset()
    compiled = torch.compile(lambda x: dropout(x, 0.1, training=True), dynamic=True, fullgraph=True)
    for shape in [(64, 33), (40, 7, 3)]:
        y = compiled(torch.ones(shape))
        assert y.shape == shape
        assert 0.0 < (y == 0).float().mean().item() < 0.3
