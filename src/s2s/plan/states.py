"""Weights, gradients and optimiser state per device, under one device, DDP or FSDP.

Notation: P parameters, N devices (devices x nodes), c the compute dtype's bytes.

                       weights                 gradients            optimiser (AdamW / adamw_scale)
    one device, DDP    4P (+ 2P bf16 copies    4P (+ 4P DDP's       8P: exp_avg, exp_avg_sq,
                       autocast makes for      gradient buckets)    float32
                       the step, kept for
                       the backward)
    FSDP FULL_SHARD    4P / N + c (root +      4P / N + c (root     8P / N
                       2 layer units)          + 1 layer unit)
                       gathered

Mixed precision (`bf16-mixed`, `16-mixed`) keeps float32 master weights; `*-true` keeps the
weights themselves in c bytes (AdamW's state then too; adamw_scale's stays float32). FSDP
gathers one unit per Transformer layer (s2s.distributed) and keeps the root unit (embeddings,
LM head, final norms, position tables) gathered for the whole step; with prefetching two
layer units are gathered at once.
"""

from __future__ import annotations

from dataclasses import dataclass

FLOAT32 = 4
OPTIMIZERS = ("adamw", "adamw_scale")


@dataclass(frozen=True)
class Sizes:
    """Parameter counts the states depend on."""

    total: int
    root: int  # outside the encoder / decoder layers (FSDP's root unit)
    largest_layer: int  # the largest encoder or decoder layer (one FSDP unit)
    largest_tensor: int  # the largest single parameter (adamw_scale's step temporaries)


@dataclass(frozen=True)
class States:
    """Bytes per device of the training state, and the optimiser step's temporaries."""

    weights: int
    gradients: int
    optimizer: int
    optimizer_step: int  # transient, while the step runs (after the backward)


def states(sizes: Sizes, *, precision: str, strategy: str, world: int, optimizer: str) -> States:
    """The per-device states of `sizes` (see the module docstring). `strategy` is "single",
    "ddp" or "fsdp"; `precision` a Lightning setting ("bf16-mixed", "32-true", ...)."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"the planner knows optimizer {OPTIMIZERS}, not {optimizer!r}")
    c = 2 if precision.startswith(("bf16", "16")) else FLOAT32
    mixed = precision.endswith("mixed")
    master = FLOAT32 if c == FLOAT32 or mixed else c  # bytes of a stored weight
    moments = 2 * (FLOAT32 if optimizer == "adamw_scale" else master)
    # adamw_scale's unfused step: corrected, denom, update, scaled update of one tensor
    step = 4 * FLOAT32 * sizes.largest_tensor if optimizer == "adamw_scale" else 0
    if strategy == "fsdp":
        shard = -(-sizes.total // world)  # ceil
        gathered = c * (sizes.root + 2 * sizes.largest_layer)
        return States(
            weights=master * shard + (gathered if world > 1 or c != master else 0),
            gradients=master * shard + (c * (sizes.root + sizes.largest_layer) if world > 1 else 0),
            optimizer=moments * shard,
            optimizer_step=step,
        )
    copies = c * sizes.total if mixed and c != FLOAT32 else 0
    buckets = master * sizes.total if strategy == "ddp" and world > 1 else 0
    return States(
        weights=master * sizes.total + copies,
        gradients=master * sizes.total + buckets,
        optimizer=moments * sizes.total,
        optimizer_step=step,
    )
