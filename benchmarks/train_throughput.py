"""Training throughput of s2s against transformers' T5: same weights, same process, interleaved.

Run: python benchmarks/train_throughput.py [--shapes t5_small tiny] [--dtypes float32 bfloat16]
         [--batch-size N] [--warmup 2] [--steps 6] [--dropout 0.1] [--device cpu|cuda]
         [--threads N] [--compile] [--padding 0.25]

For each shape a randomly initialised HF `T5ForConditionalGeneration` is built from a config
(never downloaded) and converted with `s2s.interop.hf.from_hf`, so both models start from
identical weights; s2s runs with `s2s.kernels` installed (S2S_KERNELS=0: the plain model).
One training step is forward, cross-entropy (as in `Seq2SeqLitModule.loss`),
backward and a fused `torch.optim.AdamW` step (both libraries' default); in bf16 the forward
and loss run under `torch.autocast(device_type, torch.bfloat16)` with float32 weights. The
implementations take turns step by step (the first to go alternates), warm-up steps are
dropped, and each reports the median step time. Inputs are full-length random ids (packed
pre-training batches: no padding): s2s gets no attention mask, as the training loop passes
none for an unpadded batch (decided on the host), transformers an all-ones mask.
--padding F pads the last F of every other source row (fine-tuning batches): both get the mask.

Columns
  tok/s     (source + target tokens) * batch / median step time.
  ratio     s2s tok/s / transformers tok/s in the same run.
  peak MiB  CUDA: max_memory_allocated during one extra step, minus the memory allocated
            before it. CPU: the process's peak resident set (VmHWM, reset through
            /proc/self/clear_refs) during one extra step, minus the resident set before it
            (after `malloc_trim`), i.e. the activation and gradient memory the step touched;
            "n/a" where /proc is unavailable.
  MFU       model FLOPs per step / median step time / the median rate of a square
            `torch.matmul` (--matmul-size, in the step's compute dtype) timed in turn with
            the steps, so under the same machine load.

Model FLOPs per step: `s2s.throughput.train_flops` (matrix multiplies, training = 3 x forward;
the formula and its sources in its docstring), as `train/mfu` in training counts them.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import functools
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from torch import Tensor, nn
from transformers import T5Config, T5ForConditionalGeneration

from s2s import kernels
from s2s.config import ModelConfig
from s2s.interop.hf import from_hf
from s2s.throughput import train_flops


@dataclasses.dataclass(frozen=True)
class Shape:
    hf_config: dict
    src_len: int
    tgt_len: int
    batch: dict[str, int]  # default batch size per device type


SHAPES = {
    # T5 v1.0 small (Raffel et al. 2020): ReLU, relative bias, tied and scaled logits.
    "t5_small": Shape(
        dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
             feed_forward_proj="relu", tie_word_embeddings=True),
        src_len=512, tgt_len=114, batch={"cpu": 4, "cuda": 32},
    ),
    # The `tiny` preset's sizes as a T5 v1.1-style model (gated SiLU, untied logits); T5 has
    # no rotary positions, so both sides use the relative bias.
    "tiny": Shape(
        dict(vocab_size=8192, d_model=256, d_kv=64, d_ff=1024, num_layers=3, num_heads=4,
             feed_forward_proj="gated-silu", tie_word_embeddings=False),
        src_len=128, tgt_len=128, batch={"cpu": 16, "cuda": 128},
    ),
}  # fmt: skip
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class MatmulProbe:
    """Times a square matmul in the step's compute dtype, in turn with the training steps.

    Its median rate (FLOP/s) is the "achievable" rate MFU is measured against; timing it in
    the same loop as the steps exposes it to the same machine load.
    """

    def __init__(self, dtype: torch.dtype, device: torch.device, size: int) -> None:
        self.a = torch.randn(size, size, device=device).to(dtype)
        self.b = torch.randn(size, size, device=device).to(dtype)
        self.flops = 2 * size**3
        self.times: list[float] = []

    def step(self, batch: Batch) -> None:  # same call as Runner.step; the batch is unused
        torch.matmul(self.a, self.b)

    def rate(self) -> float:
        return self.flops / statistics.median(self.times)


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class PeakMemory:
    """Peak memory a step adds (bytes), or None when it cannot be measured."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.clear_refs = Path("/proc/self/clear_refs")
        self.libc = _libc()

    def measure(self, step: Callable[[], None]) -> int | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            step()
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - before
        if not self.clear_refs.exists() or self.libc is None:
            return None
        self.libc.malloc_trim(0)  # hand freed heap pages back so RSS counts live memory
        self.clear_refs.write_text("5")  # reset VmHWM to the current RSS
        before = _proc_status_kib("VmRSS")
        step()
        return (_proc_status_kib("VmHWM") - before) * 1024


def _libc():
    with contextlib.suppress(OSError):
        return ctypes.CDLL("libc.so.6")
    return None


def _proc_status_kib(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE).group(1))


@dataclasses.dataclass
class Batch:
    input_ids: Tensor  # (B, S)
    attention_mask: Tensor  # (B, S), 1 = real token
    labels: Tensor  # (B, T)
    decoder_input_ids: Tensor  # (B, T), labels shifted right


def random_batch(
    cfg: ModelConfig, batch: int, shape: Shape, device: torch.device, padding: float = 0.0
) -> Batch:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(2, cfg.vocab_size, (batch, shape.src_len), generator=gen)
    mask = torch.ones_like(ids)
    mask[1::2, shape.src_len - int(padding * shape.src_len) :] = 0  # every other row padded
    ids = ids.masked_fill(mask == 0, cfg.pad_token_id)
    labels = torch.randint(2, cfg.vocab_size, (batch, shape.tgt_len), generator=gen)
    start = torch.full((batch, 1), cfg.decoder_start_token_id)
    decoder_ids = torch.cat([start, labels[:, :-1]], dim=1)
    return Batch(*(t.to(device) for t in (ids, mask, labels, decoder_ids)))


def s2s_logits(model: nn.Module, padded: bool) -> Callable[[Batch], Tensor]:
    """The model's call as Seq2SeqLitModule makes it: no mask for an unpadded batch."""
    return lambda b: model(b.input_ids, b.decoder_input_ids, b.attention_mask if padded else None)


def hf_logits(model: nn.Module) -> Callable[[Batch], Tensor]:
    return lambda b: (
        model(
            input_ids=b.input_ids,
            attention_mask=b.attention_mask,
            decoder_input_ids=b.decoder_input_ids,
        ).logits
    )


@dataclasses.dataclass
class Runner:
    """One implementation: its logits function, optimiser, autocast and measured step times."""

    name: str
    logits: Callable[[Batch], Tensor]
    optimizer: torch.optim.Optimizer
    autocast: Callable[[], contextlib.AbstractContextManager]
    times: list[float] = dataclasses.field(default_factory=list)

    def step(self, batch: Batch) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            logits = self.logits(batch)  # (B, T, V)
            # the training loop's loss (Seq2SeqLitModule.loss)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), batch.labels.flatten())
        loss.backward()
        self.optimizer.step()


def interleave(
    runners: list[Runner], probe: MatmulProbe, batch: Batch, args: argparse.Namespace, device
) -> None:
    """Step the runners and the matmul probe in turn (the first runner alternates); record
    times after warm-up."""
    for i in range(args.warmup + args.steps):
        for runner in [*(runners if i % 2 == 0 else runners[::-1]), probe]:
            start = _now(device)
            runner.step(batch)
            elapsed = _now(device) - start
            if i >= args.warmup:
                runner.times.append(elapsed)


def build_models(shape: Shape, dropout: float, device: torch.device):
    torch.manual_seed(0)
    config = T5Config(**shape.hf_config, dropout_rate=dropout, decoder_start_token_id=0)
    hf = T5ForConditionalGeneration(config).to(device).train()
    ours = kernels.install(from_hf(hf).to(device).train())  # S2S_KERNELS=0: the plain model
    return ours, hf


def check_parity(ours: nn.Module, hf: nn.Module, batch: Batch) -> float:
    """Max abs logit difference in eval mode (float32): the weights really are identical."""
    ours.eval(), hf.eval()
    with torch.no_grad():
        error = (s2s_logits(ours, True)(batch) - hf_logits(hf)(batch)).abs().max().item()
    ours.train(), hf.train()
    return error


def run_shape(name: str, args: argparse.Namespace, device: torch.device) -> list:
    shape = SHAPES[name]
    batch_size = args.batch_size or shape.batch[device.type]
    ours, hf = build_models(shape, args.dropout, device)
    batch = random_batch(ours.config, batch_size, shape, device, args.padding)
    padded = args.padding > 0
    error = check_parity(ours, hf, batch)
    attn = hf.config._attn_implementation
    print(f"# {name}: max |logit diff| s2s vs HF ({attn} attention) = {error:.2e}", flush=True)
    flops = train_flops(ours.config, batch_size, shape.src_len, shape.tgt_len)
    tokens = batch_size * (shape.src_len + shape.tgt_len)
    label = f"{name} B={batch_size} S={shape.src_len} T={shape.tgt_len}"
    if padded:
        label += f" pad={args.padding:g}"
    rows = []
    for dtype_name in args.dtypes:
        autocast = functools.partial(_autocast, DTYPES[dtype_name], device)
        # the fused kernel on both sides: s2s.optim's default, and transformers' Trainer
        # default ("adamw_torch_fused")
        ours_adam = torch.optim.AdamW(ours.parameters(), lr=1e-4, fused=True)
        hf_adam = torch.optim.AdamW(hf.parameters(), lr=1e-4, fused=True)
        runners = [
            Runner("s2s", s2s_logits(ours, padded), ours_adam, autocast),
            Runner("transformers", hf_logits(hf), hf_adam, autocast),
        ]
        if args.compile:
            compiled = s2s_logits(torch.compile(ours), padded)
            runners.insert(1, Runner("s2s+compile", compiled, ours_adam, autocast))
        probe = MatmulProbe(DTYPES[dtype_name], device, args.matmul_size)
        interleave(runners, probe, batch, args, device)
        print(f"# matmul {args.matmul_size}^2 {dtype_name}: {probe.rate() / 1e9:,.1f} GFLOP/s")
        memory = PeakMemory(device)
        reference = tokens / statistics.median(runners[-1].times)  # transformers
        for runner in runners:
            peak = memory.measure(functools.partial(runner.step, batch))
            per_second = tokens / statistics.median(runner.times)
            rows.append(
                (
                    label,
                    dtype_name,
                    runner.name,
                    f"{per_second:,.0f}",
                    f"{per_second / reference:.2f}",
                    "n/a" if peak is None else f"{peak / 2**20:,.0f}",
                    f"{100 * flops * per_second / tokens / probe.rate():.1f}%",
                )
            )
            print(" | ".join(rows[-1]), flush=True)
    return rows


def _autocast(dtype: torch.dtype, device: torch.device) -> contextlib.AbstractContextManager:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--batch-size", type=int, default=None, help="default: per shape")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--dropout", type=float, default=0.1, help="T5's dropout_rate")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(s2s)")
    parser.add_argument(
        "--padding", type=float, default=0.0, help="share of every other source row padded"
    )
    parser.add_argument("--matmul-size", type=int, default=2048)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"# torch {torch.__version__}, transformers {transformers.__version__},"
        f" {torch.get_num_threads()} threads, device {device}, dropout {args.dropout}"
    )
    header = ("shape", "dtype", "implementation", "tok/s", "ratio", "peak MiB", "MFU")
    rows = []
    for name in args.shapes:
        rows += run_shape(name, args, device)
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
