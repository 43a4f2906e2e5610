"""The one-position decoding fast path (`s2s.model.decode_step`) against `DecoderLayer.forward`."""

from __future__ import annotations

import pytest
import torch
from model_fixtures import VOCAB, padded_batch, tiny_model

import s2s.model.stacks as stacks
from s2s.generation import GenerationConfig, generate
from s2s.model.feedforward import FeedForward

# every branch of layer_step: positions (bias / rotary / absolute), norm kind and placement,
# gated or plain feed-forward and its activation, projection biases, unscaled attention,
# rotary cross-attention, the math attention backend
VARIANTS = {
    "t5": dict(positions="t5_relative", norm="rmsnorm", activation="gelu_tanh",
               scale_attention=False),
    "bart": dict(positions="learned", norm="layernorm", norm_position="post", gated_ffn=False,
                 activation="gelu", attention_bias=True, ffn_bias=True),
    "rotary": dict(positions="rotary", activation="silu"),
    "rotary_cross": dict(positions="rotary", rotary_cross_attention=True),
    "sinusoidal_relu": dict(positions="sinusoidal", gated_ffn=False, activation="relu",
                            norm="layernorm"),
    "math_backend": dict(positions="t5_relative", attention_backend="math"),
    "no_positions_post_rms": dict(positions="none", norm_position="post"),
    "narrow_heads": dict(positions="t5_relative", n_heads=3, d_head=6),  # H * Dh != D
    "bfloat16": dict(positions="rotary", rotary_cross_attention=True, dtype=torch.bfloat16),
}  # fmt: skip


def decode_logits(model, batch, steps: int, fast: bool) -> list[torch.Tensor]:
    """Logits of `steps` one-token decode calls (feeding back the argmax), fast path on/off."""
    calls = 0
    real_step = stacks.layer_step

    def counting_step(*args):
        nonlocal calls
        calls += 1
        return real_step(*args)

    stacks.layer_step = counting_step
    try:
        with torch.inference_mode(), model.decoding_layout(batch.input_ids.shape[0]):
            assert model.decoder.fast_steps  # no hooks: the layout turns it on
            model.decoder.fast_steps = fast
            memory = model.encode(batch.input_ids, batch.attention_mask)
            cache = model.new_cache()
            ids = torch.zeros(batch.input_ids.shape[0], 1, dtype=torch.long)
            logits = []
            for _ in range(steps):
                out = model.decode(ids, memory, batch.attention_mask, cache=cache)
                logits.append(out.logits)
                ids = out.logits[:, -1:].argmax(-1)
    finally:
        stacks.layer_step = real_step
    n_layers = model.config.n_decoder_layers
    # the first call fills the cross-attention cache through forward; the rest take the path
    assert calls == (n_layers * (steps - 1) if fast else 0)
    return logits


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("rows", [1, 3])  # padded sources from 3 rows on
def test_fast_steps_equal_the_layer_forward(name, rows):
    variant = dict(VARIANTS[name])
    dtype = variant.pop("dtype", torch.float32)
    model = tiny_model(seed=3, **variant).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)  # biases and norm gains away from 0 and 1
    batch = padded_batch(src_lengths=(9, 5, 2)[:rows], tgt_lengths=(1,) * rows, seed=rows)
    fast = decode_logits(model, batch, steps=6, fast=True)
    slow = decode_logits(model, batch, steps=6, fast=False)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_a_forward_hook_turns_the_fast_path_off_and_runs():
    model = tiny_model(seed=0, positions="t5_relative")
    seen = []
    handle = model.decoder.layers[0].cross_attn.q.register_forward_hook(
        lambda module, args, out: seen.append(out.shape)
    )
    ids = padded_batch(src_lengths=(4, 3), tgt_lengths=(1, 1)).input_ids
    generate(model, ids, max_new_tokens=4, config=GenerationConfig(min_new_tokens=4))
    assert len(seen) == 4  # one call per generated token: the hook was never skipped
    handle.remove()
    with model.decoding_layout(2):
        assert model.decoder.fast_steps
    assert not model.decoder.fast_steps  # only inside a decoding layout


def test_fast_steps_do_not_change_generated_tokens():
    model = tiny_model(seed=1, positions="rotary", vocab_size=VOCAB)
    ids = padded_batch(src_lengths=(6, 2, 5), tgt_lengths=(1, 1, 1)).input_ids
    config = GenerationConfig(max_new_tokens=8, min_new_tokens=8)
    fast = generate(model, ids, config=config)
    real_can_step = stacks.can_step
    stacks.can_step = lambda *args: False
    try:
        slow = generate(model, ids, config=config)
    finally:
        stacks.can_step = real_can_step
    assert torch.equal(fast, slow)


def test_patched_or_swapped_modules_turn_the_fast_path_off():
    model = tiny_model(seed=0, positions="t5_relative")
    ids = padded_batch(src_lengths=(4, 3), tgt_lengths=(1, 1)).input_ids
    config = GenerationConfig(max_new_tokens=4, min_new_tokens=4)
    expected = generate(model, ids, config=config)
    wo = model.decoder.layers[1].ffn.wo
    calls = []
    wo.forward = lambda x: (calls.append(1), torch.nn.Linear.forward(wo, x))[1]  # patched
    assert torch.equal(generate(model, ids, config=config), expected)
    assert len(calls) == 4  # called at every step
    del wo.forward
    plain = torch.nn.Linear(wo.in_features, wo.out_features, bias=False)  # swapped
    plain.weight = wo.weight
    model.decoder.layers[1].ffn.wo = plain
    assert torch.equal(generate(model, ids, config=config), expected)
    with model.decoding_layout(2):
        assert not model.decoder.fast_steps


def test_a_class_level_patch_or_a_training_layer_turns_the_fast_path_off(monkeypatch):
    model = tiny_model(seed=0, positions="t5_relative")
    with model.decoding_layout(2):
        assert model.decoder.fast_steps
    calls = []
    real = FeedForward.forward
    monkeypatch.setattr(FeedForward, "forward", lambda self, x: (calls.append(1), real(self, x))[1])
    ids = padded_batch(src_lengths=(4, 3), tgt_lengths=(1, 1)).input_ids
    generate(model, ids, config=GenerationConfig(max_new_tokens=3, min_new_tokens=3))
    n_encoder, n_decoder = model.config.n_encoder_layers, model.config.n_decoder_layers
    assert len(calls) == n_encoder + 3 * n_decoder  # every decoder layer at every step
    monkeypatch.undo()
    model.decoder.layers.train()
    with model.decoding_layout(2):
        assert not model.decoder.fast_steps
