"""`model.compile=true`: torch.compile(model) gives the eager logits and gradients.

The training module wraps the model with `torch.compile` when `config.compile` is set; this
checks the same call on a minimal model (1 + 1 layers) with T5's relative bias, padding and
dropout off, compiled as one graph (a graph break would be a silent slowdown), plain and with
the kernel twins that training installs.
"""

from __future__ import annotations

import pytest
import torch
from helpers.model import kernel_model, padded_batch, tiny_model

TOL = dict(atol=1e-5, rtol=1e-5)
pytestmark = pytest.mark.slow  # torch.compile


@pytest.mark.parametrize("make", [tiny_model, kernel_model], ids=["plain", "kernels"])
def test_compiled_model_matches_eager_forward_and_backward(make):
    torch.compiler.reset()
    model = make(positions="t5_relative", n_encoder_layers=1, n_decoder_layers=1).train()
    batch = padded_batch()
    args = (batch.input_ids, batch.decoder_input_ids, batch.attention_mask)
    compiled = torch.compile(model, fullgraph=True)

    results = []
    for forward in (model, compiled):
        model.zero_grad(set_to_none=True)
        logits = forward(*args, batch.decoder_attention_mask)
        logits.logsumexp(-1).mean().backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        results.append((logits.detach(), grads))
    (eager, eager_grads), (compiled_logits, compiled_grads) = results
    torch.testing.assert_close(compiled_logits, eager, **TOL)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)
