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

import math
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import Tensor, nn

from s2s.model.layers import DecoderLayer, EncoderLayer

LAYER_UNITS = {EncoderLayer, DecoderLayer}


class S2SFSDPStrategy(FSDPStrategy):
    """Lightning's `FSDPStrategy`, also on CPU processes (gloo): `trainer=fsdp_cpu`.

    Lightning refuses an accelerator other than CUDA for the class `FSDPStrategy` itself (by
    exact type); torch's FSDP runs on CPU with gloo, which is how the tests check `trainer=fsdp`
    (tests/test_distributed.py). On GPUs nothing differs."""

    def _setup_model(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        if self.root_device.type != "cpu" or isinstance(model, FullyShardedDataParallel):
            return super()._setup_model(model)
        # torch's FSDP wants device_id=cpu on CPU, Lightning passes the device's index (None
        # there): wrap here, and let Lightning do the rest of its setup on the wrapped model
        # (without the policy, which it would otherwise warn about and delete).
        wrapped = FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=self.root_device,
            **self.kwargs,
        )
        policy = self.kwargs.pop("auto_wrap_policy", None)
        try:
            return super()._setup_model(wrapped)
        finally:
            if policy is not None:
                self.kwargs["auto_wrap_policy"] = policy

    # Lightning gathers full state dicts with offload_to_cpu=True; with CPU parameters rank 0
    # then dies with SIGSEGV writing a checkpoint (torch 2.13, reproduced with torch's FSDP
    # alone): on CPU, gather without offloading; on GPUs, Lightning's own.

    def lightning_module_state_dict(self) -> dict[str, Any]:
        if self.root_device.type != "cpu" or self._state_dict_type != "full":
            return super().lightning_module_state_dict()
        with _full_state_dict_on_cpu(self.model):
            return self.model.state_dict()

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        from torch.distributed.fsdp import FullyShardedDataParallel, OptimStateKeyType

        if self.root_device.type != "cpu" or self._state_dict_type != "full":
            return super().optimizer_state(optimizer)
        optimizer = getattr(optimizer, "_optimizer", optimizer)  # a LightningOptimizer's own
        with _full_state_dict_on_cpu(self.model):
            state = FullyShardedDataParallel.optim_state_dict(self.model, optimizer)
            if self.global_rank == 0:  # keyed by parameter index, as Lightning saves it
                state = FullyShardedDataParallel.rekey_optim_state_dict(
                    state, OptimStateKeyType.PARAM_ID, self.model
                )
            return state


def _full_state_dict_on_cpu(model: nn.Module):
    """FSDP's full state dicts (model and optimiser), on rank 0 only, not offloaded."""
    from torch.distributed.fsdp import (
        FullOptimStateDictConfig,
        FullStateDictConfig,
        FullyShardedDataParallel,
        StateDictType,
    )

    return FullyShardedDataParallel.state_dict_type(
        model,
        StateDictType.FULL_STATE_DICT,
        FullStateDictConfig(offload_to_cpu=False, rank0_only=True),
        FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=True),
    )


def fsdp_strategy(**kwargs: Any) -> S2SFSDPStrategy:
    """`S2SFSDPStrategy` with `LAYER_UNITS` as the wrap policy; `kwargs` are Lightning's other
    arguments (e.g. sharding_strategy). Activation checkpointing is s2s's own switch
    (`activation_checkpointing=true`), which works the same with or without FSDP."""
    return S2SFSDPStrategy(auto_wrap_policy=set(LAYER_UNITS), **kwargs)


def fsdp_root(module: nn.Module | None) -> Any:
    """`module` if it is a root FSDP unit (Lightning's `trainer.model` under trainer=fsdp: the
    LightningModule wrapped), else None."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    return module if isinstance(module, FullyShardedDataParallel) else None


@dataclass(frozen=True)
class Shards:
    """How FSDP (use_orig_params=True) holds a model's parameters: each one a 1-D piece of its
    unit's flat tensor (empty on ranks that hold none of it), spread over `group`'s ranks."""

    shapes: dict[int, torch.Size]  # id(parameter) -> the parameter's whole shape
    group: Any  # the process group a tensor's pieces are spread over

    def shape(self, param: Tensor) -> torch.Size:
        return self.shapes.get(id(param), param.shape)

    def numel(self, param: Tensor) -> int:
        return math.prod(self.shape(param))


def shards_of(model: nn.Module) -> Shards | None:
    """The `Shards` of the FSDP units inside `model` (under trainer=fsdp, pass the root:
    Lightning's `trainer.model`, which holds the shared embedding and head), or None without FSDP.

    Reads the originals' shapes from torch's FlatParameter (`_flat_param._params` / `_shapes`,
    private API: tested in tests/test_distributed.py against torch's release in use)."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    units = FullyShardedDataParallel.fsdp_modules(model)
    if not units:
        return None
    shapes: dict[int, torch.Size] = {}
    for unit in units:
        flat = unit._flat_param
        if flat is None:  # a unit without parameters of its own
            continue
        if flat._params is None:
            raise ValueError(
                "trainer.strategy.use_orig_params=false: s2s decides weight decay per parameter "
                "(matrices only), which needs use_orig_params=true (Lightning's default)"
            )
        shapes.update({id(p): shape for p, shape in zip(flat._params, flat._shapes, strict=True)})
    return Shards(shapes, units[0].process_group)


def end_process_group() -> None:
    """After `trainer.fit` under DDP / FSDP: wait for every rank, free what still refers to the
    process groups, destroy them. FSDP modules sit in reference cycles that keep the (gloo)
    group alive past `destroy_process_group`, to be freed at interpreter exit, where a gloo
    thread could abort the process ("terminate called without an active exception"; issue 26,
    the same teardown as tests/test_distributed.py). Nothing to do in a single process."""
    import gc

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    gc.collect()
    dist.destroy_process_group()
