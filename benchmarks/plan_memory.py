"""The planner's training memory against the measured peak of real CPU steps.

Run: python benchmarks/plan_memory.py

For each shape (a model preset at a batch shape) and with / without activation checkpointing:
`s2s.plan`'s prediction (weights + gradients + AdamW state + the activation peak, float32 on
the CPU) next to the peak of live tensor bytes of a real training step
(`s2s.plan.measure.measure_step_peak`: the model as train() builds it, the loop's loss,
backward, clipping and AdamW; a TorchDispatchMode counts every storage while it lives).
tests/test_plan_memory.py holds the same comparison to 20% at smaller shapes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from s2s.plan.__main__ import compose_train
from s2s.plan.devices import device
from s2s.plan.job import job_from_config
from s2s.plan.measure import measure_step_peak
from s2s.plan.planner import memory_at

SHAPES = {  # preset: (rows, source length, target length)
    "tiny": (8, 128, 128),
    "small": (4, 128, 128),
    "t5_small": (2, 256, 64),
}
MB = 1e6


def main() -> None:
    cpu = device("cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {Path(sys.argv[0]).name}")
    columns = ["shape", "B x S -> T", "checkpointing", "predicted MB (activations)"]
    columns += ["measured MB (activations)", "ratio"]
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|")
    for preset, (rows, s, t) in SHAPES.items():
        for checkpointing in (False, True):
            cfg = compose_train(
                [
                    f"model={preset}",
                    f"data.max_source_length={s}",
                    f"data.max_target_length={t}",
                    f"data.batch_size={2 * rows}",
                    f"data.micro_batch_size={rows}",
                    f"activation_checkpointing={str(checkpointing).lower()}",
                ]
            )
            job = job_from_config(cfg)
            predicted = memory_at(job, cpu, rows)
            measured = measure_step_peak(job.model, rows, s, t, checkpointing=checkpointing)
            print(
                f"| {preset} | {rows} x {s} -> {t} | {'on' if checkpointing else 'off'} "
                f"| {predicted.total / MB:.1f} ({predicted.activations.peak / MB:.1f}) "
                f"| {measured.peak / MB:.1f} ({measured.activations / MB:.1f}) "
                f"| {predicted.total / measured.peak:.3f} "
                f"({predicted.activations.peak / measured.activations:.3f}) |",
                flush=True,
            )  # fmt: skip


if __name__ == "__main__":
    main()
