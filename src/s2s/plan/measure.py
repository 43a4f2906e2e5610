"""Measuring what the planner predicts: the peak of live tensor bytes during training steps.

On CPU there is no `torch.cuda.max_memory_allocated`, and the process's resident set counts
the allocator's caches, freed pages kept by malloc and the Python heap: too noisy to check a
prediction within 20%. `LiveBytes` counts what the CUDA allocator would: every tensor storage
from the moment an operator creates it (a `TorchDispatchMode` sees every output, in forward,
backward and the optimiser step alike) until its last reference goes (a weak-reference
callback on the storage), plus storages that exist when counting starts (weights, gradients,
optimiser state) handed to `track`. The peak of that sum is what a step needs.

`measure_step_peak` runs real training steps of the model as `s2s.pipeline.train` builds it
(kernels installed, attention backend, activation checkpointing), with the training loop's
loss (`Seq2SeqLitModule.loss`), backward, gradient clipping and the configured optimiser, and
returns the peak of the last step.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from s2s.config import ModelConfig


class LiveBytes(TorchDispatchMode):
    """Bytes of live tensor storages: `current` now, `peak` the most since entering."""

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._seen: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def track(self, tensor: torch.Tensor) -> None:
        """Count `tensor`'s storage (once, however many views share it) while it lives."""
        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        if storage in self._seen:
            return
        size = storage.nbytes()
        self._seen[storage] = weakref.ref(storage, lambda _, size=size: self._free(size))
        self.current += size
        self.peak = max(self.peak, self.current)

    def _free(self, size: int) -> None:
        self.current -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            self.track(tensor)
        return out


@dataclass(frozen=True)
class MeasuredStep:
    """Live bytes of the last of `measure_step_peak`'s steps."""

    states: int  # weights + gradients + optimiser state when the measured micro-batch starts
    peak: int  # the most live bytes during its forward, backward, clipping and optimiser step

    @property
    def activations(self) -> int:
        return self.peak - self.states


def measure_step_peak(
    config: ModelConfig,
    rows: int,
    source_len: int,
    target_len: int,
    *,
    checkpointing: bool = False,
    attention_backend: str = "sdpa",
    optimizer: str = "adamw",
    seed: int = 0,
) -> MeasuredStep:
    """Train `config` on random full-length (rows, S) -> (rows, T) batches on the CPU, float32,
    as `s2s.pipeline.train` builds and steps it, and count the live bytes of the last step.

    The step measured is the second micro-batch of an accumulation of two, after one whole
    step: weights, gradients and optimiser state all exist as it starts, as in any step
    that accumulates (the planner's total assumes the same)."""
    from s2s import kernels, optim
    from s2s.lit_module import Seq2SeqLitModule
    from s2s.model import Seq2SeqTransformer

    torch.manual_seed(seed)
    model = kernels.install(Seq2SeqTransformer(config)).train()
    model.set_attention_backend(attention_backend).checkpoint_activations(checkpointing)
    make_optimizer = {"adamw": optim.adamw, "adamw_scale": optim.adamw_scale}[optimizer]
    opt = make_optimizer(model)
    # the training loop's loss, called on the pieces of the module it reads
    module = SimpleNamespace(model=model, _forward=model, label_smoothing=0.0)
    generator = torch.Generator().manual_seed(seed)

    def micro_batch() -> None:
        ids = torch.randint(3, config.vocab_size, (rows, source_len), generator=generator)
        labels = torch.randint(3, config.vocab_size, (rows, target_len), generator=generator)
        batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
        loss, logits = Seq2SeqLitModule.loss(module, batch)
        del logits  # as training_step returns: before the backward
        loss.backward()

    def finish_step() -> None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for _ in range(2):  # one whole step, so the optimiser state exists
        micro_batch()
    finish_step()
    opt.zero_grad(set_to_none=True)
    micro_batch()
    counter = LiveBytes()
    for param in model.parameters():
        counter.track(param)
        counter.track(param.grad)
    for state in opt.state.values():
        for value in state.values():
            counter.track(value)
    states = counter.current
    with counter:
        micro_batch()
        finish_step()
    return MeasuredStep(states=states, peak=counter.peak)
