"""FSDP with one shard unit per layer (s2s.distributed): the policy, and a real 2-process
FULL_SHARD forward/backward on CPU (gloo). Lightning's FSDPStrategy itself refuses a CPU
accelerator, so `trainer=fsdp` is for GPUs; torch's FSDP under it is what is checked here."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers.model import tiny_config

from s2s import kernels
from s2s.distributed import LAYER_UNITS, fsdp_strategy
from s2s.model import Seq2SeqTransformer

CONFIG = tiny_config()


def model_and_batch():
    torch.manual_seed(0)
    model = kernels.install(Seq2SeqTransformer(CONFIG))
    ids = torch.randint(2, 64, (4, 7), generator=torch.Generator().manual_seed(1))
    return model, ids


def loss_of(model, ids):
    logits = model(ids, model.shift_right(ids))
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten())


def _rank(rank: int, port: int, out: str) -> None:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    model, ids = model_and_batch()
    sharded = FSDP(
        model,
        auto_wrap_policy=ModuleWrapPolicy(LAYER_UNITS),
        sharding_strategy=ShardingStrategy.FULL_SHARD,
        device_id=torch.device("cpu"),
        use_orig_params=True,
    )
    half = ids[rank * 2 : rank * 2 + 2]  # each rank its own rows
    loss = loss_of(sharded, half)
    loss.backward()
    losses = [torch.zeros(()) for _ in range(2)]
    dist.all_gather(losses, loss.detach())
    units = [n for n, m in sharded.named_modules() if isinstance(m, FSDP)]
    local = sum(p.numel() for p in sharded.parameters())
    if rank == 0:
        with open(out, "w") as handle:
            json.dump(
                {"losses": [float(x) for x in losses], "units": units, "local": local}, handle
            )
    dist.destroy_process_group()


@pytest.mark.slow  # spawns processes
def test_fsdp_full_shard_on_two_cpu_processes_matches_the_plain_model(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "fsdp.json"
    mp.spawn(_rank, args=(port, str(out)), nprocs=2, join=True)
    result = json.loads(out.read_text())
    model, ids = model_and_batch()
    expected = [float(loss_of(model, ids[:2])), float(loss_of(model, ids[2:]))]
    assert result["losses"] == pytest.approx(expected, rel=1e-5)
    # one unit per layer plus the root (embedding shared by encoder, decoder and head)
    assert sorted(result["units"]) == sorted(
        [
            "",
            *(
                f"_fsdp_wrapped_module.{s}.layers.{i}"
                for s in ("encoder", "decoder")
                for i in (0, 1)
            ),
        ]
    )
    total = sum(p.numel() for p in model.parameters())
    assert result["local"] < 0.6 * total  # sharded: each rank holds about half


def test_fsdp_strategy_wraps_the_layer_classes():
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    policy = fsdp_strategy(sharding_strategy="FULL_SHARD").kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy)
    assert set(policy._module_classes) == LAYER_UNITS
    twins = {type(m) for m in kernels.install(Seq2SeqTransformer(CONFIG)).modules()}
    layer_types = [t for t in twins if issubclass(t, tuple(LAYER_UNITS))]
    assert len(layer_types) == 2  # kernel twins are still the layer classes FSDP looks for
