"""The CUDA path: SDPA's fused kernels and bf16 autocast give the float32 reference's numbers;
the T5 bias with key padding makes no dense mask; the kernel twins (installed wherever s2s
trains) match the plain model on CUDA; greedy decoding on CUDA gives the CPU's tokens for the
same weights; a Lightning run (bf16-mixed, 20 steps, then a resume from its checkpoint);
train.py under DDP on one GPU, eager and compiled.

Runs where CUDA exists, in one command: `pytest -m gpu` (benchmarks/gpu_check.py runs it);
skipped on CPU-only machines, where the same code is covered by every other test. conftest.py
puts the float32 matmul precision and TF32 flags back after every test.
"""

from __future__ import annotations

import csv
import math

import pytest
import torch
from helpers.model import kernel_model, long_padded_batch, padded_batch, tiny_model
from helpers.train import compose_train, overrides_for, run_cli

from s2s.checkpoint import read_checkpoint
from s2s.generation import GenerationConfig, generate
from s2s.kernels import TWINS, decoding_session
from s2s.lit_module import Seq2SeqLitModule
from s2s.pipeline import train

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


@pytest.mark.parametrize("lengths", ["short", "long"])
@pytest.mark.parametrize("positions", ["rotary", "t5_relative"])
def test_sdpa_on_cuda_matches_the_math_reference(positions, lengths):
    batch = (padded_batch() if lengths == "short" else long_padded_batch()).to("cuda")
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


def test_t5_key_padding_makes_no_dense_mask_on_cuda():
    """An encoder forward and backward in bf16 at S = 512: a padded batch peaks less than one
    (B, H, S, S) tensor above the same batch unpadded (the bias goes to SDPA alone, the padding
    in the keys; before, a combined mask and its gradient cost two or more)."""
    b, s = 16, 512
    model = tiny_model(positions="t5_relative", max_positions=s).cuda().train()
    ids = torch.randint(4, 64, (b, s), device="cuda")
    padding = torch.ones(b, s, dtype=torch.long, device="cuda")
    padding[::2, s // 2 :] = 0
    dense = b * model.config.n_heads * s * s * 2  # bytes of one bf16 (B, H, S, S) tensor

    def peak(mask):
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            memory = model.encode(ids, mask)
        memory.float().square().mean().backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start

    peak(padding)  # warm-up: kernels chosen, workspaces allocated
    assert peak(padding) - peak(None) < dense / 2


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
@pytest.mark.parametrize("positions", ["rotary", "t5_relative"])
def test_decoding_on_cuda_gives_the_cpus_tokens(positions, strategy):
    """Every tensor the search makes must be on the input's device (beam search alone makes
    eight), and the CUDA kernels must pick the CPU's tokens."""
    config = GenerationConfig(
        strategy=strategy, num_beams=3 if strategy == "beam" else 1, max_new_tokens=12
    )
    batch = padded_batch()
    model = tiny_model(positions=positions)
    with torch.no_grad():  # random small-init models repeat one token: 20x makes them vary
        for p in model.parameters():
            p.mul_(20.0 if p.dim() == 2 else 1.0)
    expected = generate(model, batch.input_ids, batch.attention_mask, config=config)
    cuda = batch.to("cuda")
    tokens = generate(model.cuda(), cuda.input_ids, cuda.attention_mask, config=config)
    assert tokens.device.type == "cuda"
    assert torch.equal(tokens.cpu(), expected)
    assert len({tuple(row) for row in expected.tolist()}) > 1  # the rows really differ


def test_kernel_twins_on_cuda_equal_the_plain_model():
    """`kernels.install` switches classes whatever the device (the twins dispatch on it): on
    CUDA they must fall back to the plain computation, in training and in decoding."""
    batch = padded_batch().to("cuda")
    plain = tiny_model(positions="t5_relative").cuda().train()
    twins = kernel_model(positions="t5_relative").cuda().train()
    assert {type(m) for m in twins.modules()} & set(TWINS.values())  # installed
    (a, grads_a), (b, grads_b) = _logits_and_grads(twins, batch), _logits_and_grads(plain, batch)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grad, grads_b[name], atol=1e-5, rtol=1e-4, msg=name)
    twins.eval(), plain.eval()
    args = (batch.input_ids, batch.attention_mask)
    with decoding_session(twins):
        decoded = generate(twins, *args, max_new_tokens=12)
    assert torch.equal(decoded, generate(plain, *args, max_new_tokens=12))


def _metrics(run) -> list[dict[str, str]]:
    with (run / "csv" / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow  # two training runs
@pytest.mark.skipif(
    torch.cuda.is_available() and not torch.cuda.is_bf16_supported(), reason="needs bf16"
)
def test_lightning_bf16_run_of_twenty_steps_then_resume(tiny_data, tmp_path, monkeypatch):
    seen = []
    loss = Seq2SeqLitModule.loss

    def spy(self, batch):
        result = loss(self, batch)
        seen.append((result[1].device.type, torch.is_autocast_enabled("cuda"), result[1].dtype))
        return result

    monkeypatch.setattr(Seq2SeqLitModule, "loss", spy)
    common = [
        *overrides_for(tiny_data, tmp_path),
        "trainer=gpu",  # bf16-mixed
        "trainer.val_check_interval=10",
        "callbacks.last_checkpoint.every_n_train_steps=10",
    ]
    first = train(compose_train([*common, "trainer.max_steps=20"]))
    assert set(seen) == {("cuda", True, torch.bfloat16)}  # every loss: CUDA, bf16 autocast
    assert read_checkpoint(first["last_checkpoint"]).raw["global_step"] == 20
    assert math.isfinite(first["metrics"]["val/loss"])
    resumed = train(compose_train([*common, "ckpt_path=last", "trainer.max_steps=24"]))
    state = read_checkpoint(resumed["last_checkpoint"]).raw
    assert state["global_step"] == 24
    rows = [r for r in _metrics(tmp_path / "run") if r.get("train/loss")]
    assert rows and min(int(r["step"]) for r in rows) >= 20  # continued, not restarted
    assert all(math.isfinite(float(r["train/loss"])) for r in rows)


@pytest.mark.slow  # a train.py process (and torch.compile)
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compile"])
def test_train_py_under_ddp_on_one_gpu(tiny_data, tmp_path, compiled):
    """train.py trainer=ddp with one device: NCCL, DDP's wrapper, bf16; with compile=true the
    trainer says the compiled model overlaps DDP's all-reduce (s2s.trainer)."""
    args = [
        *overrides_for(tiny_data, tmp_path),
        "trainer=ddp",
        "trainer.devices=1",
        "trainer.max_steps=4",
        f"compile={str(compiled).lower()}",
    ]
    done = run_cli(args, cwd=tmp_path, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "distributed_backend=nccl" in out and "Starting with 1 processes" in out
    assert ("compile=true under DDP" in out) == compiled
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last).raw["global_step"] == 4
    assert all(
        math.isfinite(float(r["train/loss"]))
        for r in _metrics(tmp_path / "run")
        if r.get("train/loss")
    )
