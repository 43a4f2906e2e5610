"""The T5 relative bias with key padding: kept (1, H, T, S) beside a (B, 1, 1, S) padding mask,
never folded into a (B, H, T, S) bias, and equal to the math path everywhere it is used
(encoder, decoder self-attention, cross-attention, cached decoding), with and without padding.

Notation: B batch, H heads, S source length, T target length.
"""

from __future__ import annotations

import pytest
import torch
from helpers.attention import recorded_sdpa
from helpers.model import (
    decode_step_by_step,
    long_padded_batch,
    padded_batch,
    tiny_model,
    with_kernels,
)
from torch.utils._python_dispatch import TorchDispatchMode

TOL = dict(atol=1e-5, rtol=1e-5)
PATHS = ("sdpa", "math", "kernels")  # kernels: s2s.kernels' CPU attention over "sdpa"


def t5_model(path: str, seed: int = 0):
    model = tiny_model(
        seed, positions="t5_relative", attention_backend="math" if path == "math" else "sdpa"
    )
    return with_kernels(model) if path == "kernels" else model


class DenseAllocations(TorchDispatchMode):
    """Counts the new tensors (not views of, or in-place results on, an op's inputs) of a
    given shape that aten ops make."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape, self.count = torch.Size(shape), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [a for a in (*args, *(kwargs or {}).values()) if isinstance(a, torch.Tensor)]
        seen = {a.untyped_storage().data_ptr() for a in inputs}
        for o in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(o, torch.Tensor) and o.shape == self.shape:
                self.count += o.untyped_storage().data_ptr() not in seen
        return out


def dense_tensors_made(model, input_ids, attention_mask) -> int:
    """(B, H, S, S) tensors made by an encoder forward and backward."""
    b, s = input_ids.shape
    with DenseAllocations((b, model.config.n_heads, s, s)) as counter:
        model.encode(input_ids, attention_mask).square().sum().backward()
    return counter.count


def padding_cost(path: str, positions: str, batch=None) -> int:
    """How many more (B, H, S, S) tensors an encoder pass makes over a padded batch than over
    the same shapes unpadded."""
    model = t5_model(path) if positions == "t5_relative" else tiny_model(positions=positions)
    if path == "math":
        model.set_attention_backend("math")
    model.train()  # dropout is 0: the same ops every call
    batch = batch or padded_batch()
    padded = dense_tensors_made(model, batch.input_ids, batch.attention_mask)
    return padded - dense_tensors_made(model, batch.input_ids, None)


@pytest.mark.parametrize("path", ["math", "kernels", "sdpa"])
def test_padding_costs_no_more_with_the_bias_than_without(path):
    """Key padding costs an encoder pass no more (B, H, S, S) tensors with the T5 bias than
    without one: the padding is applied to the scores (which the math path and the CPU
    kernels compute anyway) or carried by the keys (SDPA), never folded into a dense bias (as
    it was, with that dense bias's gradient on top). The CPU kernels apply it in place: no
    extra tensor at all."""
    batch = long_padded_batch()
    assert padding_cost(path, "t5_relative", batch) == padding_cost(path, "none", batch)
    if path != "math":
        assert padding_cost(path, "t5_relative", batch) == 0


def test_sdpa_gets_the_bias_alone_with_the_padding_in_the_keys():
    """torch's SDPA takes one mask: every layer gets the (1, H, S, S) bias itself, the key
    padding rides in extra key columns, and a forward makes no (B, H, S, S) tensor at all
    (CPU's flash kernel takes the broadcast bias)."""
    model = t5_model("sdpa")
    batch = long_padded_batch()
    with recorded_sdpa() as calls:
        model.encode(batch.input_ids, batch.attention_mask)
    heads, s = model.config.n_heads, batch.input_ids.shape[1]
    assert len(calls) == model.config.n_encoder_layers
    assert all(mask is calls[0][2] for _, _, mask in calls)
    assert calls[0][2].shape == (1, heads, s, s)
    assert calls[0][0][-1] == calls[0][1][-1] == 16  # Dh 8 + 8 columns
    with torch.no_grad(), DenseAllocations((3, heads, s, s)) as counter:
        model.encode(batch.input_ids, batch.attention_mask)
    assert counter.count == 0


@pytest.mark.parametrize("path", ["sdpa", "kernels"])
@pytest.mark.parametrize("padded", ["short", "long", "none"])
def test_t5_bias_paths_equal_the_math_path(path, padded):
    """Logits and every gradient (the bias tables included) equal the math path's, with a
    padded source (encoder self-attention, cross-attention) and padded decoder inputs: short
    (SDPA gets a combined mask) and long (SDPA gets the padding in the keys)."""
    batch = {
        "short": padded_batch(),
        "long": long_padded_batch(),
        "none": padded_batch(src_lengths=(9, 9, 9), tgt_lengths=(7,) * 3),
    }[padded]
    results = []
    for which in (path, "math"):
        model = t5_model(which).train()  # dropout 0
        logits = model(
            batch.input_ids,
            batch.decoder_input_ids,
            batch.attention_mask if padded != "none" else None,
            batch.decoder_attention_mask if padded != "none" else None,
        )
        logits.logsumexp(-1).mean().backward()
        results.append((logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (logits, grads), (math_logits, math_grads) = results
    torch.testing.assert_close(logits, math_logits, **TOL)
    assert grads["encoder.relative_bias.weight"].abs().sum() > 0
    for name, grad in grads.items():
        torch.testing.assert_close(grad, math_grads[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("capacity", [0, 16])
def test_cached_decoding_with_padding_equals_the_math_full_pass(path, capacity):
    """Decoding one token a call over a padded source, with the decoder's own padding mask
    given (bias and padding in the cached self-attention), equals the math path's full pass."""
    batch = padded_batch(tgt_lengths=(7, 7, 7))
    decoder_mask = torch.ones_like(batch.decoder_input_ids)
    full = t5_model("math")(
        batch.input_ids, batch.decoder_input_ids, batch.attention_mask, decoder_mask
    )
    model = t5_model(path)
    stepped, _ = decode_step_by_step(model, batch, first_chunk=3, capacity=capacity)
    torch.testing.assert_close(stepped, full, **TOL)
    memory = model.encode(batch.input_ids, batch.attention_mask)
    cache = model.new_cache(capacity)
    pieces = []
    for t in range(batch.decoder_input_ids.shape[1]):
        out = model.decode(
            batch.decoder_input_ids[:, t : t + 1],
            memory,
            batch.attention_mask,
            cache=cache,
            decoder_attention_mask=decoder_mask[:, : t + 1],
        )
        pieces.append(out.logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, **TOL)


@pytest.mark.parametrize("batch", [padded_batch(), long_padded_batch()], ids=["short", "long"])
def test_kernels_on_a_gpu_keep_the_padding_beside_the_bias(batch):
    """Off the CPU the kernel twins hand every attention to torch's SDPA (`sdpa_is_fused` is
    True there): the key padding beside the T5 bias must reach it. Simulated on the CPU by
    making `sdpa_is_fused` answer as it does on CUDA; logits equal the math path's."""
    full = t5_model("math")(
        batch.input_ids, batch.decoder_input_ids, batch.attention_mask, batch.decoder_attention_mask
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("s2s.kernels.attention.sdpa_is_fused", lambda *args: True)
        logits = t5_model("kernels")(
            batch.input_ids,
            batch.decoder_input_ids,
            batch.attention_mask,
            batch.decoder_attention_mask,
        )
    torch.testing.assert_close(logits, full, **TOL)
