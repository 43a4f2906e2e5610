"""The devices the planner knows: memory and matmul peak, by the name `--device` takes.

Memory is what `nvidia-smi` reports for the card (MiB), of which `USABLE_FRACTION` is planned
for: the CUDA context, cuBLAS / NCCL workspaces and the caching allocator's fragmentation take
the rest (PyTorch's "reserved but unallocated" is typically a few percent of a training run's
peak). Peaks are `s2s.throughput`'s data-sheet table (dense bf16; float32 runs as TF32 at half).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import torch

from s2s.config import physical_memory
from s2s.throughput import gpu_peak_flops, measured_matmul_flops

MIB = 2**20
USABLE_FRACTION = 0.9
# --device name: (the name s2s.throughput's table matches, memory in MiB as nvidia-smi says)
GPUS: dict[str, tuple[str, int]] = {
    "h100-80gb": ("H100", 81_559),
    "h100-nvl": ("H100 NVL", 95_830),
    "h200": ("H200", 143_771),
    "a100-40gb": ("A100", 40_960),
    "a100-80gb": ("A100", 81_920),
    "l40s": ("L40S", 46_068),
    "l4": ("L4", 23_034),
    "a10": ("A10", 23_028),
    "rtx4090": ("RTX 4090", 24_564),
    "b200": ("B200", 183_359),
    "h800": ("H800", 81_559),
    "a800-80gb": ("A800", 81_920),
    "h20": ("H20", 97_871),
    "rtx6000-ada": ("RTX 6000 Ada", 49_140),
    "v100-32gb": ("V100", 32_768),
    "t4": ("T4", 15_360),
}
DEVICE_NAMES = (*GPUS, "cpu")
UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 2**10, "m": 2**20}
UNITS |= {"g": 2**30, "t": 2**40}


@dataclass(frozen=True)
class Device:
    """One accelerator (or the CPU) as the plan sees it."""

    name: str
    memory: int  # bytes
    cuda: bool
    peak_bf16: float  # FLOP/s
    peak_fp32: float

    @property
    def usable_memory(self) -> int:
        return int(self.memory * USABLE_FRACTION)

    def peak(self, dtype: torch.dtype) -> float:
        return self.peak_fp32 if dtype == torch.float32 else self.peak_bf16


def device(name: str, memory: str | None = None) -> Device:
    """The device called `name` (one of DEVICE_NAMES), its memory replaced by `memory`."""
    key = name.lower()
    if key == "cpu":
        rate = measured_matmul_flops(torch.device("cpu"), torch.float32)
        found = Device("cpu", physical_memory(), False, rate, rate)
    elif key in GPUS:
        table_name, mib = GPUS[key]
        bf16 = gpu_peak_flops(table_name, torch.bfloat16)
        fp32 = gpu_peak_flops(table_name, torch.float32)
        assert bf16 is not None and fp32 is not None, table_name  # GPUS names table rows
        found = Device(key, mib * MIB, True, bf16, fp32)
    else:
        raise ValueError(f"--device {name!r} is not known: use one of {', '.join(DEVICE_NAMES)}")
    if memory is not None:
        found = dataclasses.replace(found, memory=parse_memory(memory))
    return found


def parse_memory(text: str) -> int:
    """Bytes of "80GB" (10^9), "80GiB" / "80G" (2^30), "512MB", ... ."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in UNITS or float(match.group(1)) <= 0:
        raise ValueError(f"--memory {text!r} must be a size such as 80GB, 40GiB or 512MB")
    return int(float(match.group(1)) * UNITS[unit])
