"""The plan of a job on a device: parameters, tokens and FLOPs per step, memory by part under
one device / DDP / FSDP, the largest micro-batch that fits, and time at an assumed MFU.

Parameters are counted on a meta-device model (s2s.model.meta: shapes, no storage); FLOPs are
`s2s.throughput.train_flops` of the global batch, as train/mfu counts them; memory is
`s2s.plan.states` plus `s2s.plan.activations`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from s2s.config import ModelConfig
from s2s.model.meta import meta_model
from s2s.plan.activations import Activations, Execution, activations
from s2s.plan.devices import Device
from s2s.plan.job import Job
from s2s.plan.states import Sizes, States, states
from s2s.throughput import train_flops


@dataclass(frozen=True)
class Parameters:
    total: int
    embeddings: int  # token embedding, untied LM head, learned position tables
    encoder_layer: int
    decoder_layer: int
    sizes: Sizes


@dataclass(frozen=True)
class Memory:
    """Bytes per device at one micro-batch size."""

    states: States
    activations: Activations

    @property
    def total(self) -> int:
        s = self.states
        return s.weights + s.gradients + s.optimizer + max(self.activations.peak, s.optimizer_step)

    def as_dict(self) -> dict[str, int]:
        return {
            "weights": self.states.weights,
            "gradients": self.states.gradients,
            "optimizer": self.states.optimizer,
            "activations": self.activations.peak,
            "total": self.total,
        }


@dataclass(frozen=True)
class Plan:
    job: Job
    device: Device
    mfu: float
    parameters: Parameters
    tokens_per_step: int
    flops_per_step: float
    memory: Memory  # the configured strategy and micro-batch
    by_strategy: dict[str, Memory]  # "ddp" (or one device) and "fsdp", configured micro-batch
    checkpointing_flipped: Activations  # the same micro-batch with checkpointing switched
    max_micro_batch: int  # 0: not even one row fits
    step_seconds: float

    @property
    def run_seconds(self) -> float:
        return self.step_seconds * max(self.job.max_steps, 0)

    def as_dict(self) -> dict[str, Any]:
        job, p = self.job, self.parameters
        fits = self.max_micro_batch
        return {
            "parameters": p.total,
            "parameter_counts": {
                "embeddings": p.embeddings,
                "encoder_layer": p.encoder_layer,
                "decoder_layer": p.decoder_layer,
            },
            "tokens_per_step": self.tokens_per_step,
            "flops_per_step": self.flops_per_step,
            "device": {
                "name": self.device.name,
                "memory_bytes": self.device.memory,
                "usable_bytes": self.device.usable_memory,
                "peak_flops": self.device.peak(job.compute_dtype),
            },
            "world": job.world,
            "strategy": job.strategy,
            "micro_batch": job.micro_batch,
            "accumulation": job.accumulation,
            "memory_bytes": self.memory.as_dict(),
            "memory_bytes_by_strategy": {k: m.as_dict() for k, m in self.by_strategy.items()},
            "activation_bytes": dataclasses.asdict(self.memory.activations),
            "activation_bytes_checkpointing_"
            + ("off" if job.checkpointing else "on"): self.checkpointing_flipped.peak,
            "fits": self.memory.total <= self.device.usable_memory,
            "max_micro_batch": fits,
            "max_micro_batch_accumulation": (
                job.global_batch // (fits * job.world) if fits else None
            ),
            "mfu": self.mfu,
            "step_seconds": self.step_seconds,
            "run_seconds": self.run_seconds,
        }


def count_parameters(config: ModelConfig) -> Parameters:
    """Parameter counts of `Seq2SeqTransformer(config)`, from a model without storage."""
    model = meta_model(config)
    total = sum(p.numel() for p in model.parameters())
    encoder = sum(p.numel() for p in model.encoder.layers[0].parameters())
    decoder = sum(p.numel() for p in model.decoder.layers[0].parameters())
    embeddings = model.embed.weight.numel()
    embeddings += model.lm_head.weight.numel() if model.lm_head is not None else 0
    for stack in (model.encoder, model.decoder):
        embeddings += stack.embed.learned.weight.numel() if stack.embed.learned is not None else 0
    layers = config.n_encoder_layers * encoder + config.n_decoder_layers * decoder
    sizes = Sizes(
        total=total,
        root=total - layers,
        largest_layer=max(encoder, decoder),
        largest_tensor=max(p.numel() for p in model.parameters()),
    )
    return Parameters(total, embeddings, encoder, decoder, sizes)


def make_plan(job: Job, device: Device, mfu: float) -> Plan:
    """The plan of `job` on `device` at model FLOPs utilisation `mfu`."""
    if not 0 < mfu <= 1:
        raise ValueError(f"--mfu {mfu} must be in (0, 1]")
    parameters = count_parameters(job.model)
    memory = _memory(job, device, parameters, job.strategy, job.micro_batch)
    other = "fsdp" if job.strategy != "fsdp" else ("ddp" if job.world > 1 else "single")
    by_strategy = {
        job.strategy: memory,
        other: _memory(job, device, parameters, other, job.micro_batch),
    }
    flipped = dataclasses.replace(job, checkpointing=not job.checkpointing)
    flops = train_flops(job.model, job.global_batch, job.source_len, job.target_len)
    peak = device.peak(job.compute_dtype)
    return Plan(
        job=job,
        device=device,
        mfu=mfu,
        parameters=parameters,
        tokens_per_step=job.global_batch * (job.source_len + job.target_len),
        flops_per_step=flops,
        memory=memory,
        by_strategy=by_strategy,
        checkpointing_flipped=_activations(flipped, device, job.micro_batch),
        max_micro_batch=max_micro_batch(job, device, parameters),
        step_seconds=flops / (job.world * peak * mfu),
    )


def max_micro_batch(job: Job, device: Device, parameters: Parameters) -> int:
    """The largest micro-batch that divides the per-device batch (so accumulation keeps the
    global batch) and fits the device's usable memory; 0 if none does."""
    per_device = job.global_batch // job.world
    best = 0
    for rows in range(1, per_device + 1):
        if per_device % rows:
            continue
        if _memory(job, device, parameters, job.strategy, rows).total > device.usable_memory:
            break  # memory grows with the rows
        best = rows
    return best


def memory_at(job: Job, device: Device, rows: int, strategy: str | None = None) -> Memory:
    """Per-device memory of `job` at micro-batch `rows` (the job's strategy by default)."""
    return _memory(job, device, count_parameters(job.model), strategy or job.strategy, rows)


def _memory(job: Job, device: Device, parameters: Parameters, strategy: str, rows: int) -> Memory:
    held = states(
        parameters.sizes,
        precision=job.precision,
        strategy=strategy,
        world=job.world,
        optimizer=job.optimizer,
    )
    return Memory(held, _activations(job, device, rows))


def _activations(job: Job, device: Device, rows: int) -> Activations:
    run = Execution(
        compute_bytes=job.compute_dtype.itemsize,
        cuda=device.cuda,
        attention_backend=job.attention_backend,
        padded=job.padded,
        checkpointing=job.checkpointing,
    )
    return activations(job.model, run, rows, job.source_len, job.target_len)
