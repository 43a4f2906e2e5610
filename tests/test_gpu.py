"""The CUDA path: SDPA's fused kernels and bf16 autocast give the float32 reference's numbers.

Runs where CUDA exists (`pytest -m gpu`); skipped on CPU-only machines, where the same model
code is covered by every other test.
"""

from __future__ import annotations

import pytest
import torch
from helpers.model import padded_batch, tiny_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(autouse=True)
def _float32_is_float32():
    """The references here are true float32 (no TF32), whatever ran before in this process;
    conftest.py restores the previous setting afterwards."""
    torch.set_float32_matmul_precision("highest")


def _logits_and_grads(model, batch, dtype=None):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
        logits = model(batch.input_ids, batch.decoder_input_ids, batch.attention_mask)
    logits.float().logsumexp(-1).mean().backward()
    return logits.float(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("positions", ["rotary", "t5_relative"])
def test_sdpa_on_cuda_matches_the_math_reference(positions):
    batch = padded_batch().to("cuda")
    sdpa = tiny_model(positions=positions).cuda().train()  # dropout is off in tiny_model
    math = tiny_model(positions=positions, attention_backend="math").cuda().train()
    (a, grads_a), (b, grads_b) = _logits_and_grads(sdpa, batch), _logits_and_grads(math, batch)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grad, grads_b[name], atol=1e-4, rtol=1e-3, msg=name)


def test_bf16_autocast_stays_close_to_float32():
    batch = padded_batch().to("cuda")
    model = tiny_model().cuda().train()
    reference, _ = _logits_and_grads(model, batch)
    logits, grads = _logits_and_grads(model, batch, torch.bfloat16)
    assert logits.dtype == torch.float32  # compared in float32
    # bf16 keeps 8 bits of mantissa: logits agree to about 1e-2 of their scale
    scale = reference.abs().max()
    assert (logits - reference).abs().max() <= 2e-2 * scale
    assert all(torch.isfinite(g).all() for g in grads.values())
