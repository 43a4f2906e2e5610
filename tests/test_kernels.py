"""The kernel twins (`s2s.kernels`): installing them, and each one equal to the plain module.

Attention (the CPU path and its in-place backward), dropout's mask, decode weights and the
huge-page buffer; the decoding twins are in test_kernels_decode.py.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from helpers.attention import assert_dropout_of_the_probabilities, randn
from helpers.model import POSITIONS, kernel_model, padded_batch, tiny_model, with_kernels
from torch import nn

import s2s.kernels.pages as pages
from s2s import kernels
from s2s.kernels.attention import attend, sdpa_is_fused
from s2s.kernels.dropout import Dropout, dropout
from s2s.kernels.linear import ONEDNN_MIN_ELEMENTS, DecodeLinear, decode_weight
from s2s.kernels.pages import HUGE_PAGE, one_buffer
from s2s.model import Seq2SeqTransformer
from s2s.model.attention import AttentionMask, build_mask
from s2s.model.feedforward import FeedForward


def test_install_switches_every_twinned_module_and_uninstall_switches_back():
    model = tiny_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    plain_types = [type(m) for m in model.modules()]
    assert kernels.install(model) is model
    for module, before in zip(model.modules(), plain_types, strict=True):
        twin = kernels.TWINS.get(before, before)
        assert type(module) is twin and isinstance(module, before)
    assert any(isinstance(m, DecodeLinear) for m in model.modules())
    assert {k: v for k, v in model.state_dict().items()}.keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    kernels.uninstall(model)
    assert [type(m) for m in model.modules()] == plain_types


def test_the_switch_leaves_models_plain(monkeypatch):
    monkeypatch.setenv("S2S_KERNELS", "0")
    assert not kernels.enabled()
    model = kernels.install(tiny_model())
    assert type(model) is Seq2SeqTransformer
    assert not any(type(m) in kernels.PLAIN for m in model.modules())
    monkeypatch.setenv("S2S_KERNELS", "yes")
    with pytest.raises(ValueError, match="S2S_KERNELS='yes' must be 0"):
        kernels.enabled()
    monkeypatch.delenv("S2S_KERNELS")
    assert kernels.enabled()


def test_a_subclass_of_a_plain_module_is_not_switched():
    class Mine(nn.Linear):
        pass

    model = tiny_model()
    model.decoder.layers[0].ffn.wo = Mine(48, 32, bias=False)
    with_kernels(model)
    assert type(model.decoder.layers[0].ffn.wo) is Mine


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_installed_model_trains_like_the_plain_one(positions, backend):
    """Logits and every gradient equal, kernels on and off (dropout 0: no random masks)."""
    batch = padded_batch()
    results = []
    for model in (
        tiny_model(positions=positions, attention_backend=backend),
        kernel_model(positions=positions, attention_backend=backend),
    ):
        model.train()
        logits = model(batch.input_ids, batch.decoder_input_ids, batch.attention_mask)
        logits.logsumexp(-1).mean().backward()
        results.append((logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (plain, plain_grads), (fast, fast_grads) = results
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
    for name, grad in fast_grads.items():
        torch.testing.assert_close(grad, plain_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_kernel_attention_dropout_is_dropout_of_the_probabilities():
    """The CPU math path scales the output instead of the probabilities: same function,
    same mask (drawn from the global generator like `s2s.kernels.dropout`), same gradients."""
    assert_dropout_of_the_probabilities(attend, dropout)


def test_kernel_feedforward_dropout_is_dropout_of_the_inner_activation():
    """The installed `Dropout` twin: wo(dropout(act(wi x))) with the mask of
    `s2s.kernels.dropout` for the same seed; in eval mode no dropout."""
    torch.manual_seed(0)
    ffn = FeedForward(8, 12, activation="relu", gated=False, bias=True, dropout=0.3).train()
    with_kernels(ffn)
    assert type(ffn.dropout) is Dropout
    x = randn(4, 5, 8)
    torch.manual_seed(5)
    out = ffn(x)
    torch.manual_seed(5)
    dropped = dropout(torch.relu(F.linear(x, ffn.wi.weight, ffn.wi.bias)), 0.3, training=True)
    torch.testing.assert_close(out, F.linear(dropped, ffn.wo.weight, ffn.wo.bias))
    plain = F.linear(torch.relu(ffn.wi(x)), ffn.wo.weight, ffn.wo.bias)
    torch.testing.assert_close(ffn.eval()(x), plain)


def test_sdpa_is_fused_on_cpu_only_without_dropout_or_bias_gradient():
    q = randn(1, 2, 3, 4)
    bias = randn(1, 2, 3, 3, requires_grad=True)
    assert sdpa_is_fused(q, AttentionMask(is_causal=True), dropout=0.0)
    assert sdpa_is_fused(q, AttentionMask(bias.detach()), dropout=0.0)
    assert not sdpa_is_fused(q, AttentionMask(bias), dropout=0.0)
    assert not sdpa_is_fused(q, AttentionMask(), dropout=0.1)


def test_sdpa_backend_with_dropout_matches_math_for_the_same_seed():
    # on CPU SDPA cannot drop out inside its fused kernel, so "sdpa" runs the math path
    q, k, v = randn(2, 2, 4, 8, seed=1), randn(2, 2, 6, 8, seed=2), randn(2, 2, 6, 8, seed=3)
    outs = []
    for backend in ("sdpa", "math"):
        torch.manual_seed(7)
        outs.append(attend(q, k, v, AttentionMask(), scale=0.5, dropout=0.3, backend=backend))
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)


# (a fully padded row only with dropout: without, torch's flash kernel runs, and it returns
# zeros for such rows where the math returns the mean of the values)
@pytest.mark.parametrize(
    ("case", "dropout"),
    [
        *itertools.product(["none", "padding", "causal", "bias", "bias+padding"], [0.0, 0.3]),
        ("empty row padding", 0.3),
    ],
)
def test_cpu_training_attention_equals_the_math_path_with_gradients(case, dropout):
    """The "sdpa" backend trains float32 CPU attention with torch's flash kernel or, with
    dropout or a learned bias, `CpuAttention` (in-place backward); the output and the
    gradients of q, k, v and the bias equal the math reference."""
    b, h, t = 2, 3, 5
    s = t if case == "causal" else 7
    padding = torch.tensor([[1] * s, [1] * (s - 3) + [0] * 3])
    if case == "empty row padding":  # a fully padded row: every key masked, P uniform
        padding = torch.tensor([[1] * s, [0] * s])
    leaves = {}

    def run(backend):
        q = randn(b, h, t, 8, seed=1, requires_grad=True)
        k, v = (randn(b, h, s, 8, seed=i, requires_grad=True) for i in (2, 3))
        bias = randn(1, h, t, s, seed=4, requires_grad=True)
        mask = build_mask(
            padding if "padding" in case else None,
            q_len=t,
            k_len=s,
            causal=case == "causal",
            bias=bias if "bias" in case else None,
        )
        torch.manual_seed(5)
        out = attend(q, k, v, mask, scale=0.7, dropout=dropout, backend=backend)
        weights = randn(*out.shape, seed=6)
        grads = torch.autograd.grad((out * weights).sum(), (q, k, v, bias), allow_unused=True)
        leaves[backend] = out.grad_fn
        return out, grads

    out, grads = run("sdpa")
    expected, expected_grads = run("math")
    # torch's flash kernel where it applies (no dropout, no learned bias), else the custom one
    fused = dropout == 0.0 and "bias" not in case
    assert type(leaves["sdpa"]).__name__ == (
        "ScaledDotProductFlashAttentionForCpuBackward0" if fused else "CpuAttentionBackward"
    )
    torch.testing.assert_close(out, expected)
    for name, got, want in zip("qkvb", grads, expected_grads, strict=True):
        if want is None:
            assert got is None, name
        else:
            torch.testing.assert_close(got, want, msg=name)


def test_attention_under_bf16_autocast_trains_like_the_math_path():
    """Under autocast, rotary q and k stay float32 while v is bf16: the "sdpa" backend must
    not take the float32-only CPU training path (it would fail in the backward)."""
    q = randn(2, 2, 4, 8, seed=1, requires_grad=True)
    k = randn(2, 2, 6, 8, seed=2, requires_grad=True)
    v = randn(2, 2, 6, 8, seed=3).bfloat16().requires_grad_(True)
    results = []
    for backend in ("sdpa", "math"):
        torch.manual_seed(3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = attend(q, k, v, AttentionMask(), scale=0.5, dropout=0.2, backend=backend)
        results.append((out, torch.autograd.grad(out.float().sum(), (q, k, v))))
    (out, grads), (expected, expected_grads) = results
    torch.testing.assert_close(out, expected)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    ("in_features", "out_features", "rows", "kind"),
    [
        (256, 320, 1, "transposed"),  # one row: the contiguous transpose ...
        (320, 256, 1, "plain"),  # ... unless the weight narrows: the parameter itself
        (256, 320, 2, "onednn"),  # several rows: oneDNN's packed weight ...
        (256, 320, 8, "onednn"),
        (48, 80, 8, "transposed"),  # ... unless the weight is small
        (80, 48, 8, "transposed"),
    ],
)
def test_decode_weight_layouts_multiply_like_linear(in_features, out_features, rows, kind):
    torch.manual_seed(0)
    layer = DecodeLinear(in_features, out_features, bias=True)
    x = torch.randn(rows, 1, in_features)
    weight = decode_weight(layer.weight, rows)
    if kind == "onednn" and not torch.backends.mkldnn.is_available():
        kind = "transposed"
    assert weight.kind == kind
    # the large cases are above the oneDNN threshold, the small ones below
    assert (layer.weight.numel() >= ONEDNN_MIN_ELEMENTS) == (min(in_features, out_features) >= 256)
    with torch.inference_mode():
        torch.testing.assert_close(
            weight.apply(x, layer.bias), F.linear(x, layer.weight, layer.bias)
        )
    if kind == "transposed":
        assert weight.tensor.is_contiguous() and torch.equal(weight.tensor, layer.weight.t())
    if kind == "plain":
        assert weight.tensor.data_ptr() == layer.weight.data_ptr()  # no copy


def test_one_buffer_copies_back_to_back_on_huge_page_boundaries():
    big = [torch.randn(700, 600).t(), torch.randn(512, 512), torch.randn(3, 5)]  # 2.7 MB
    placed = one_buffer(big)
    for original, copy in zip(big, placed, strict=True):
        assert torch.equal(copy, original) and copy.is_contiguous()
        assert copy.data_ptr() % 64 == 0  # each on a cache line
    # one buffer, starting on a 2 MB boundary (where Linux is advised to use huge pages)
    storage = placed[0].untyped_storage().data_ptr()
    assert all(t.untyped_storage().data_ptr() == storage for t in placed)
    assert placed[0].data_ptr() % HUGE_PAGE == 0
    small = [torch.randn(64, 64), torch.randn(64, 32).t()]  # under one huge page:
    kept, copied = one_buffer(small)
    assert kept is small[0]  # contiguous already: not copied
    assert copied.is_contiguous() and torch.equal(copied, small[1])


def test_one_buffer_advises_whole_huge_pages_inside_its_allocation(monkeypatch):
    advised = []
    monkeypatch.setattr(pages, "_advise_huge_pages", lambda a, n: advised.append((a, n)))
    for numels in [(700_000,), (524_289, 3), (1_000_003, 17, 262_144)]:
        placed = one_buffer([torch.randn(n) for n in numels])
        storage = placed[0].untyped_storage()
        begin, end = storage.data_ptr(), storage.data_ptr() + storage.nbytes()
        address, length = advised.pop()
        assert address % HUGE_PAGE == 0 and length % HUGE_PAGE == 0 and length > 0
        assert begin <= address and address + length <= end
        assert placed[-1].data_ptr() + placed[-1].nbytes <= end
