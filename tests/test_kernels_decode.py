"""Decoding with the kernels: decode weights, sessions, and the flat one-position step
(`s2s.kernels.decode_step`) against `DecoderLayer.forward`."""

from __future__ import annotations

import pytest
import torch
from helpers.model import POSITIONS, VOCAB, decode_step_by_step, kernel_model, padded_batch
from torch.multiprocessing.reductions import StorageWeakRef

import s2s.kernels.decode_step as decode_step
from s2s.generation import GenerationConfig, generate
from s2s.kernels import decoding_layout, decoding_session
from s2s.kernels.linear import DecodeLinear
from s2s.model.feedforward import FeedForward

TOL = dict(atol=1e-5, rtol=1e-5)


def flat_steps(model) -> bool:
    """Whether the decoder's layers take the flat step (all of them, or none)."""
    flags = {layer.flat for layer in model.decoder.layers}
    assert len(flags) == 1
    return flags.pop()


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
    real_step = decode_step.layer_step

    def counting_step(*args):
        nonlocal calls
        calls += 1
        return real_step(*args)

    decode_step.layer_step = counting_step
    try:
        with torch.inference_mode(), decoding_layout(model, batch.input_ids.shape[0]):
            assert flat_steps(model)  # no hooks: the layout turns it on
            for layer in model.decoder.layers:
                layer.flat = fast
            memory = model.encode(batch.input_ids, batch.attention_mask)
            cache = model.new_cache()
            ids = torch.zeros(batch.input_ids.shape[0], 1, dtype=torch.long)
            logits = []
            for _ in range(steps):
                out = model.decode(ids, memory, batch.attention_mask, cache=cache)
                logits.append(out.logits)
                ids = out.logits[:, -1:].argmax(-1)
    finally:
        decode_step.layer_step = real_step
    n_layers = model.config.n_decoder_layers
    # the first call fills the cross-attention cache through forward; the rest take the path
    assert calls == (n_layers * (steps - 1) if fast else 0)
    return logits


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("rows", [1, 3])  # padded sources from 3 rows on
def test_fast_steps_equal_the_layer_forward(name, rows):
    variant = dict(VARIANTS[name])
    dtype = variant.pop("dtype", torch.float32)
    model = kernel_model(seed=3, **variant).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)  # biases and norm gains away from 0 and 1
    batch = padded_batch(src_lengths=(9, 5, 2)[:rows], tgt_lengths=(1,) * rows, seed=rows)
    fast = decode_logits(model, batch, steps=6, fast=True)
    slow = decode_logits(model, batch, steps=6, fast=False)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_a_forward_hook_turns_the_fast_path_off_and_runs():
    model = kernel_model(seed=0, positions="t5_relative")
    seen = []
    handle = model.decoder.layers[0].cross_attn.q.register_forward_hook(
        lambda module, args, out: seen.append(out.shape)
    )
    ids = padded_batch(src_lengths=(4, 3), tgt_lengths=(1, 1)).input_ids
    generate(model, ids, max_new_tokens=4, config=GenerationConfig(min_new_tokens=4))
    assert len(seen) == 4  # one call per generated token: the hook was never skipped
    handle.remove()
    with decoding_layout(model, 2):
        assert flat_steps(model)
    assert not flat_steps(model)  # only inside a decoding layout


def test_fast_steps_do_not_change_generated_tokens():
    model = kernel_model(seed=1, positions="rotary", vocab_size=VOCAB)
    ids = padded_batch(src_lengths=(6, 2, 5), tgt_lengths=(1, 1, 1)).input_ids
    config = GenerationConfig(max_new_tokens=8, min_new_tokens=8)
    fast = generate(model, ids, config=config)
    real_can_step = decode_step.can_step
    decode_step.can_step = lambda *args: False
    try:
        slow = generate(model, ids, config=config)
    finally:
        decode_step.can_step = real_can_step
    assert torch.equal(fast, slow)


def test_patched_or_swapped_modules_turn_the_fast_path_off():
    model = kernel_model(seed=0, positions="t5_relative")
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
    with decoding_layout(model, 2):
        assert not flat_steps(model)


def test_a_class_level_patch_or_a_training_layer_turns_the_fast_path_off(monkeypatch):
    model = kernel_model(seed=0, positions="t5_relative")
    with decoding_layout(model, 2):
        assert flat_steps(model)
    calls = []
    real = FeedForward.forward
    monkeypatch.setattr(FeedForward, "forward", lambda self, x: (calls.append(1), real(self, x))[1])
    ids = padded_batch(src_lengths=(4, 3), tgt_lengths=(1, 1)).input_ids
    generate(model, ids, config=GenerationConfig(max_new_tokens=3, min_new_tokens=3))
    n_encoder, n_decoder = model.config.n_encoder_layers, model.config.n_decoder_layers
    assert len(calls) == n_encoder + 3 * n_decoder  # every decoder layer at every step
    monkeypatch.undo()
    model.decoder.layers.train()
    with decoding_layout(model, 2):
        assert not flat_steps(model)


@pytest.mark.parametrize("positions", POSITIONS)
def test_decoding_layout_gives_the_same_logits_and_is_dropped_after(positions):
    model = kernel_model(positions=positions, tie_embeddings=positions != "rotary")
    batch = padded_batch(tgt_lengths=(7, 7, 7))  # 3 rows: oneDNN's layout where available
    with torch.no_grad():
        expected, _ = decode_step_by_step(model, batch, capacity=8)
        with decoding_layout(model, rows=3):
            assert model.head_layout is not None
            assert model.decoder.layers[0].ffn.wi.decode is not None
            stepped, _ = decode_step_by_step(model, batch, capacity=8)
    torch.testing.assert_close(stepped, expected, **TOL)
    assert model.head_layout is None
    assert all(m.decode is None for m in model.modules() if isinstance(m, DecodeLinear))
    # with autograd on, the layout is ignored and gradients reach the parameters
    with decoding_layout(model, rows=3):
        model(batch.input_ids, batch.decoder_input_ids, batch.attention_mask).sum().backward()
    assert model.decoder.layers[0].ffn.wi.weight.grad is not None


def test_layouts_for_other_rows_free_the_old_buffer():
    model = kernel_model(d_model=256, d_ff=512, vocab_size=4096, tie_embeddings=False)
    with decoding_session(model):
        with decoding_layout(model, rows=1):
            old = StorageWeakRef(model.head_layout.tensor.untyped_storage())
        with decoding_layout(model, rows=1):  # kept
            assert not old.expired()
        with torch.no_grad():  # an edit to one weight remakes every layout of the buffer
            model.decoder.layers[0].ffn.wo.weight.mul_(1.0)
        with decoding_layout(model, rows=1):
            assert old.expired()
            old = StorageWeakRef(model.head_layout.tensor.untyped_storage())
        with decoding_layout(model, rows=3):  # other rows: the one-row buffer is gone
            assert old.expired()


def test_one_row_layouts_share_one_buffer_and_decode_the_same():
    model = kernel_model(d_model=256, d_ff=512, vocab_size=4096, tie_embeddings=False)
    batch = padded_batch(4096, src_lengths=(6,), tgt_lengths=(5,))
    with torch.inference_mode():
        expected, _ = decode_step_by_step(model, batch)
        with decoding_layout(model, rows=1):
            stepped, _ = decode_step_by_step(model, batch)
            layouts = [m.decode for m in model.decoder.modules() if isinstance(m, DecodeLinear)]
            layouts.append(model.head_layout)
            assert {w.kind for w in layouts} == {"transposed", "plain"}
            # the 4 MB head and the layers' copies together
            assert len({w.tensor.untyped_storage().data_ptr() for w in layouts}) == 1
    torch.testing.assert_close(stepped, expected, **TOL)


def test_decoding_session_keeps_layouts_until_it_ends_and_remakes_edited_ones():
    model = kernel_model().eval()
    batch = padded_batch()
    qkv = model.decoder.layers[0].self_attn.qkv

    def layouts(rows):
        with torch.inference_mode(), decoding_layout(model, rows):
            return qkv.decode, model.head_layout

    assert layouts(3)[0] is not layouts(3)[0]  # no session: made anew by every block
    with decoding_session(model):
        first = layouts(3)
        assert layouts(3)[0] is first[0] and layouts(3)[1] is first[1]  # kept
        with decoding_session(model):  # nested: the outer session's layouts
            assert layouts(3)[0] is first[0]
        assert layouts(1)[0] is not first[0]  # other rows replace them: one copy at most
        n_layers = sum(isinstance(m, DecodeLinear) for m in model.decoder.modules())
        assert len(model.layout_memo) == n_layers + 1  # the decoder's and the LM head
        first = layouts(3)
        assert layouts(3)[0] is first[0]
        # a replaced weight (model.to round trip: same Parameter, new storage) is seen
        model.to(torch.float64).to(torch.float32)
        assert layouts(3)[0] is not first[0] and layouts(3)[0].made_from(qkv.weight, 3)
        first = layouts(3)
        # an in-place edit that bumps the version counter (load_state_dict) is seen
        state = {k: v.clone() for k, v in model.state_dict().items()}
        state["decoder.layers.0.self_attn.qkv.weight"].mul_(2.0)
        model.load_state_dict(state)
        remade = layouts(3)[0]
        assert remade is not first[0] and remade.made_from(qkv.weight, 3)
        # decoding with the session's layouts equals decoding with the edited parameters
        with torch.inference_mode():
            expected, _ = decode_step_by_step(model, batch)
            with decoding_layout(model, rows=3):
                stepped, _ = decode_step_by_step(model, batch)
        torch.testing.assert_close(stepped, expected, **TOL)
    assert model.layout_memo is None
    assert layouts(3)[0] is not layouts(3)[0]
