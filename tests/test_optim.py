"""AdamW parameter groups and the warm-up learning-rate schedules (s2s.optim)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.model import tiny_model

from s2s.optim import AdamWScale, adamw, adamw_scale, lr_factor, warmup_schedule


@pytest.mark.parametrize("positions", ["learned", "t5_relative"])
def test_weight_decay_only_on_matrices_that_are_not_embeddings(positions):
    model = tiny_model(positions=positions, attention_bias=True)
    optimizer = adamw(model, lr=1e-3, weight_decay=0.1)
    decayed = {id(p) for p in optimizer.param_groups[0]["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert optimizer.param_groups[0]["weight_decay"] == 0.1
    assert optimizer.param_groups[1]["weight_decay"] == 0.0
    for name, param in model.named_parameters():
        no_decay = param.ndim < 2 or "embed" in name or "relative_bias" in name
        assert (id(param) in decayed) != no_decay, name
    # every parameter is in exactly one group
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(names)


def test_fused_kernel_by_default_on_cpu_and_same_step_as_the_loop():
    results = []
    for fused in (None, False):
        model = tiny_model()
        optimizer = adamw(model, lr=1e-2, weight_decay=0.1, fused=fused)
        assert optimizer.defaults["fused"] is (fused is None)
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        optimizer.step()
        results.append([p.detach().clone() for p in model.parameters()])
    for fused_param, loop_param in zip(*results, strict=True):
        torch.testing.assert_close(fused_param, loop_param)


@pytest.mark.parametrize(
    "bad, message",
    [(dict(lr=0.0), "optimizer.lr=0.0 must be > 0"), (dict(weight_decay=-1), "weight_decay")],
)
def test_bad_optimizer_settings_name_the_key(bad, message):
    with pytest.raises(ValueError, match=message):
        adamw(tiny_model(), **{"lr": 1e-3, **bad})


def test_schedules_by_hand():
    common = dict(warmup_steps=4, total_steps=14, min_ratio=0.1)
    # linear warm-up reaches the peak at the last warm-up step
    assert [lr_factor(s, kind="cosine", **common) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, kind="cosine", **common) == 1.0
    # half-way through the decay: cosine is at the mean of peak and floor, as is linear
    assert lr_factor(9, kind="cosine", **common) == pytest.approx(0.55)
    assert lr_factor(9, kind="linear", **common) == pytest.approx(0.55)
    assert lr_factor(6, kind="cosine", **common) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.2))
    )
    # the floor at and after total_steps
    assert lr_factor(14, kind="cosine", **common) == pytest.approx(0.1)
    assert lr_factor(100, kind="linear", **common) == pytest.approx(0.1)
    assert lr_factor(15, kind="inverse_sqrt", **common) == pytest.approx(0.5)  # sqrt(4 / 16)
    assert lr_factor(100, kind="constant", **common) == 1.0


def test_scheduler_drives_the_optimizer_learning_rate():
    optimizer = adamw(tiny_model(), lr=2e-3)
    scheduler = warmup_schedule(optimizer, kind="linear", warmup_steps=2, total_steps=4)
    seen = []
    for _ in range(5):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([1e-3, 2e-3, 2e-3, 1.1e-3, 2e-4])


@pytest.mark.parametrize(
    "bad, key",
    [
        (dict(kind="step"), "scheduler.kind"),
        (dict(warmup_steps=-1), "scheduler.warmup_steps"),
        (dict(total_steps=0), "scheduler.total_steps"),
        (dict(min_ratio=2.0), "scheduler.min_ratio"),
    ],
)
def test_bad_schedule_settings_name_the_key(bad, key):
    optimizer = adamw(tiny_model(), lr=1e-3)
    with pytest.raises(ValueError, match=key):
        warmup_schedule(optimizer, **bad)


def test_adamw_scale_steps_each_tensor_by_its_own_rms():
    torch.manual_seed(0)
    big, zero = torch.nn.Parameter(torch.randn(8, 8) * 3), torch.nn.Parameter(torch.zeros(8))
    reference = torch.nn.Parameter(big.detach().clone())
    grads = [torch.randn(8, 8), torch.randn(8)]
    ours = AdamWScale([big, zero], lr=1e-2, min_scale=1e-3)
    plain = torch.optim.AdamW([reference], lr=1e-2, betas=(0.9, 0.999), weight_decay=0.0)
    rms = big.detach().pow(2).mean().sqrt()
    before = big.detach().clone()
    for _ in range(3):
        big.grad, zero.grad, reference.grad = grads[0], grads[1], grads[0].clone()
        rms = big.detach().pow(2).mean().sqrt()
        start, start_ref = big.detach().clone(), reference.detach().clone()
        ours.step()
        plain.step()
        # the same Adam direction, times this tensor's RMS
        torch.testing.assert_close(big - start, (reference - start_ref) * rms)
    assert not torch.equal(big, before)
    assert zero.abs().max() <= 3 * 1e-2 * 1e-3 + 1e-9 and zero.abs().max() > 0  # floor: moves


def test_adamw_scale_uses_the_adamw_parameter_groups():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4))
    optimizer = adamw_scale(model, lr=2e-2, weight_decay=0.1)
    assert isinstance(optimizer, AdamWScale)
    assert [len(g["params"]) for g in optimizer.param_groups] == [1, 2]  # Linear.weight decays
    with pytest.raises(ValueError, match=r"optimizer\.lr"):
        adamw_scale(model, lr=0.0)
