"""Fully sharded data parallel (FSDP) for s2s models: one shard unit per Transformer layer.

FSDP shards parameters, gradients and optimiser state over the ranks unit by unit, gathering a
unit's full weights only while it computes. Torch's size-based default policy cuts units by
parameter count, which can put the embedding that T5/BART share between encoder input,
decoder input and LM head into a unit other than its users; here each `EncoderLayer` and
`DecoderLayer` (and their kernel twins, which subclass them) is a unit and everything else
(the shared embedding, positions, final norms, LM head) stays in the root unit, gathered for
the whole step. `conf/trainer/fsdp.yaml` and `fsdp_cpu.yaml` build it with `fsdp_strategy`.
"""

from __future__ import annotations

from typing import Any

from s2s.model.layers import DecoderLayer, EncoderLayer

LAYER_UNITS = {EncoderLayer, DecoderLayer}


def fsdp_strategy(**kwargs: Any):
    """Lightning's `FSDPStrategy` with `LAYER_UNITS` as the wrap policy; `kwargs` are its
    other arguments (e.g. sharding_strategy). Activation checkpointing is s2s's own switch
    (`activation_checkpointing=true`), which works the same with or without FSDP."""
    from lightning.pytorch.strategies import FSDPStrategy

    return FSDPStrategy(auto_wrap_policy=set(LAYER_UNITS), **kwargs)
