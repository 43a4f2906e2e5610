"""Training speed in the units people compare runs by: tokens/s, model TFLOP/s and MFU.

Notation: B batch, S source length, T target length, D model dim, I = H * Dh attention width,
F feed-forward width (`d_ff`), V vocab, L_e / L_d encoder / decoder layers.

Model FLOPs utilisation (MFU) is the FLOPs the model's arithmetic needs per second, divided by
the device's peak (PaLM, Chowdhery et al. 2022, appendix B): recomputation, padding-free
kernels and the optimiser do not count, so it compares implementations and devices fairly.

    train/tflops = train_flops(batch shape) / seconds per batch / 1e12
    train/mfu    = train/tflops * 1e12 / peak_flops(device, dtype)

The peak is `trainer.peak_tflops` when set, else the table below for a known GPU, else a
square matmul timed on this device in the training dtype (the CPU; cached per process).

The training loop measures over a logging interval (`TrainingMeter`), not per step: the device
runs behind the host, and timing one step would need a host-device synchronisation per step.
Real tokens are counted on the device and read, with the loss, once per interval, after which
the device is synchronised and the clock read: the interval's seconds are the device's.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from s2s.config import ModelConfig

# Dense (no sparsity) 16-bit tensor-core peaks in TFLOP/s (bf16; fp16 on V100 and T4, which
# have no bf16), from NVIDIA's data sheets (their headline numbers are "with sparsity", twice
# these), and the float32 matmul peak where it is not TF32 at half that (Volta and Turing have
# no TF32). Matched in order against torch.cuda.get_device_name(), so the more specific names
# come first ("L40S" before "L4", "H100 PCIe" before "H100").
GPU_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("B200", 2250.0),  # HGX B200: 4.5 PFLOPS sparse per GPU
    ("H200 NVL", 835.5),
    ("H200", 989.5),  # H200 SXM: same tensor cores as H100 SXM
    ("H100 NVL", 835.5),
    ("H100 PCIe", 756.5),
    ("H100", 989.5),  # H100 SXM (reported as "H100 80GB HBM3")
    ("H800 PCIe", 756.5),
    ("H800", 989.5),  # the H100 SXM's tensor cores, less NVLink bandwidth
    ("H20", 148.0),
    ("A100", 312.0),  # SXM and PCIe
    ("A800", 312.0),  # the A100's tensor cores
    ("L40S", 362.05),
    ("L40", 181.05),
    ("L4", 121.0),
    ("A10", 125.0),
    ("RTX 6000 Ada", 182.2),  # the L40's AD102 die
    ("RTX A6000", 154.8),
    ("RTX 4090", 165.2),  # with FP32 accumulation, as autocast runs it
    ("RTX 3090", 71.0),
    ("V100", 125.0),  # fp16 (SXM2; PCIe 112)
    ("T4", 65.0),  # fp16
)
# float32 matmuls run as TF32 (train() sets torch.set_float32_matmul_precision("high")), whose
# dense peak is half the 16-bit one on Ampere and later ...
TF32_FRACTION = 0.5
# ... and as plain float32 on the GPUs before TF32
FLOAT32_TFLOPS = {"V100": 15.7, "T4": 8.1}
MATMUL_SIZE = 1024  # square matmul timed where no peak is known


def train_flops(config: ModelConfig, batch: int, source_len: int, target_len: int) -> float:
    """FLOPs of one training step (forward + backward) on a (B, S) -> (B, T) batch.

    Matrix multiplies only, 2 FLOPs per multiply-add, as in Kaplan et al. 2020 (section 2.1:
    C_forward = 2N + 2 n_layer n_ctx d_attn per token) extended to an encoder-decoder, with
    the attention term counted for the full (unmasked) square as the kernels compute it:

        forward = 2 B [ S L_e (4 D I + P_ff)          encoder: q, k, v, out + feed-forward
                      + T L_d (6 D I + P_ff)          decoder: self q, k, v, out; cross q, out
                      + S L_d 2 D I                   cross-attention k, v of the S outputs
                      + 2 I (L_e S^2 + L_d (T^2 + T S))   QK^T and AV (self and cross)
                      + T D V ]                       LM head
        train   = 3 forward                           backward = 2 x forward

    where P_ff = (2 if gated else 1) D F + F D. The backward pass computes gradients for
    inputs and weights: twice the forward (Kaplan et al. 2020, 2.1; Hoffmann et al. 2022,
    appendix F). Norms, softmax, activations, positions, embedding lookups and the optimiser
    are left out. For the plain model this equals what torch.utils.flop_counter counts
    (tests/test_throughput.py).
    """
    d, inner = config.d_model, config.inner_dim
    ffn = (2 if config.gated_ffn else 1) * d * config.d_ff + config.d_ff * d
    macs = source_len * config.n_encoder_layers * (4 * d * inner + ffn)
    macs += target_len * config.n_decoder_layers * (4 * d * inner + 2 * d * inner + ffn)
    macs += source_len * config.n_decoder_layers * 2 * d * inner  # cross-attention k, v
    macs += 2 * inner * config.n_encoder_layers * source_len * source_len  # QK^T, AV
    macs += 2 * inner * config.n_decoder_layers * target_len * (target_len + source_len)
    macs += target_len * d * config.vocab_size  # LM head
    return 3.0 * 2.0 * batch * macs


def gpu_peak_flops(name: str, dtype: torch.dtype) -> float | None:
    """The data-sheet peak (FLOP/s) of a GPU named `name` in `dtype`; None if not in the table."""
    for key, tflops in GPU_PEAK_TFLOPS:
        if key in name:
            if dtype == torch.float32:
                tflops = FLOAT32_TFLOPS.get(key, tflops * TF32_FRACTION)
            return tflops * 1e12
    return None


@functools.cache
def measured_matmul_flops(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a square `MATMUL_SIZE` matmul in `dtype` on `device`: the best of 5 runs
    after a warm-up (once per process and device)."""
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device).to(dtype)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device).to(dtype)
    best = float("inf")
    for attempt in range(6):
        start = time.perf_counter()
        torch.matmul(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if attempt:  # the first is the warm-up
            best = min(best, time.perf_counter() - start)
    return 2.0 * MATMUL_SIZE**3 / max(best, 1e-9)


def peak_flops(
    device: torch.device, dtype: torch.dtype, override_tflops: float | None = None
) -> tuple[float, str]:
    """The peak (FLOP/s) MFU is measured against, and where it came from (for the report)."""
    if override_tflops is not None:
        return override_tflops * 1e12, "trainer.peak_tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak_flops(name, dtype)
        if peak is not None:
            return peak, f"{name} data sheet"
    rate = measured_matmul_flops(device, dtype)
    return rate, f"a {MATMUL_SIZE}x{MATMUL_SIZE} {_dtype_name(dtype)} matmul on {device.type}"


def compute_dtype(precision: str) -> torch.dtype:
    """The matmul dtype of a Lightning precision setting ("bf16-mixed", "32-true", ...)."""
    if str(precision).startswith("bf16"):
        return torch.bfloat16
    if str(precision).startswith("16"):
        return torch.float16
    return torch.float32


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass
class Throughput:
    """Running totals of training work on this device: real tokens, model FLOPs, seconds."""

    tokens: int = 0
    flops: float = 0.0
    seconds: float = 0.0

    @property
    def tokens_per_sec(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def flops_per_sec(self) -> float:
        return self.flops / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Reading:
    """A `TrainingMeter` interval, read: real tokens, padded positions, model FLOPs, seconds,
    and the loss of its last batch (None if it had no batch)."""

    tokens: int
    positions: int
    flops: float
    seconds: float
    loss: float | None


class TrainingMeter:
    """Training work since the last `read`, kept without a host-device synchronisation per
    step: real tokens are summed on the device, padded positions and FLOPs (from the batch
    shapes) on the host, and the clock starts at the interval's first batch."""

    def __init__(self) -> None:
        self._tokens: Tensor | None = None  # 0-d, on the device
        self._loss: Tensor | None = None  # the last batch's, on the device
        self._positions = 0
        self._flops = 0.0
        self._clock: float | None = None

    def start(self) -> None:
        """Start the clock, unless an interval is already running."""
        if self._clock is None:
            self._clock = time.perf_counter()

    def add(self, tokens: Tensor, positions: int, flops: float, loss: Tensor) -> None:
        """One batch: its real tokens (a 0-d device tensor), padded positions, FLOPs, loss."""
        tokens = tokens.detach()
        self._tokens = tokens if self._tokens is None else self._tokens + tokens
        self._loss = loss.detach()
        self._positions += positions
        self._flops += flops

    def pending_tokens(self) -> int:
        """Real tokens not yet read (reading them waits for the device)."""
        return 0 if self._tokens is None else int(self._tokens)

    def read(self, device: torch.device) -> Reading:
        """The interval so far, with one read from the device; the next interval starts now."""
        tokens, loss = 0, None
        if self._tokens is not None:
            # one copy to the host (the loss with the count), which waits for the device
            tokens_, loss = torch.stack([self._tokens.double(), self._loss.double()]).tolist()
            tokens = int(tokens_)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # every stream's work, not only the current one's
        now = time.perf_counter()
        seconds = 0.0 if self._clock is None else now - self._clock
        reading = Reading(tokens, self._positions, self._flops, seconds, loss)
        self.__init__()
        self._clock = now
        return reading

    def stop(self) -> None:
        """Stop the clock (validation time is not training time): `read` first."""
        self._clock = None
