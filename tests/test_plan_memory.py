"""The planner's training memory against the measured peak of real CPU steps (within 20%).

How it is measured (s2s.plan.measure): the model is built and stepped as train() does on the
CPU (s2s.kernels installed, float32, the training loop's loss, backward, gradient clipping and
AdamW), and a `TorchDispatchMode` counts the bytes of every tensor storage from the operator
that creates it until its last reference dies (weak-reference callbacks), plus the weights,
gradients and optimiser state that exist when the measured micro-batch starts (the second of
an accumulation of two). That is what CUDA's max_memory_allocated reports on a GPU, free of
the allocator caches and Python heap that make the resident set (RSS) too noisy for this.

The shapes: the tiny and small presets (rotary, fused attention on CPU) and T5 v1.0 small
(relative bias and attention dropout: the unfused attention keeps its probabilities; tied
(V, D) embedding gradients), each with and without activation checkpointing.
"""

from __future__ import annotations

import pytest
from helpers.train import compose_train

from s2s.plan.devices import device
from s2s.plan.job import job_from_config
from s2s.plan.measure import measure_step_peak
from s2s.plan.planner import memory_at

pytestmark = pytest.mark.slow
TOLERANCE = 0.2
SHAPES = {  # preset: (rows, source length, target length)
    "tiny": (4, 64, 64),
    "small": (2, 64, 64),
    "t5_small": (1, 128, 32),
}


@pytest.mark.parametrize("checkpointing", [False, True], ids=["stored", "checkpointed"])
@pytest.mark.parametrize("preset", list(SHAPES))
def test_predicted_training_memory_is_within_20_percent_of_the_measured_peak(preset, checkpointing):
    rows, source_len, target_len = SHAPES[preset]
    cfg = compose_train(
        [
            f"model={preset}",
            f"data.max_source_length={source_len}",
            f"data.max_target_length={target_len}",
            f"data.batch_size={2 * rows}",
            f"data.micro_batch_size={rows}",
            f"activation_checkpointing={str(checkpointing).lower()}",
        ]
    )
    job = job_from_config(cfg)
    predicted = memory_at(job, device("cpu"), rows)
    measured = measure_step_peak(
        job.model, rows, source_len, target_len, checkpointing=checkpointing
    )
    states = predicted.states
    assert states.weights + states.gradients + states.optimizer == pytest.approx(
        measured.states, rel=0.01
    )
    assert predicted.activations.peak == pytest.approx(measured.activations, rel=TOLERANCE)
    assert predicted.total == pytest.approx(measured.peak, rel=TOLERANCE)
