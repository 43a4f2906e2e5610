"""FSDP with one shard unit per layer (s2s.distributed): the policy, a real 2-process
FULL_SHARD forward/backward on CPU (gloo), the optimiser on sharded parameters (groups by whole
shape, `adamw_scale`'s whole-tensor RMS, FSDP's own clipping), and `train.py trainer=fsdp_cpu`:
`trainer=fsdp` through Lightning, on two CPU processes."""

from __future__ import annotations

import copy
import gc
import json
import os
import socket
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers.model import tiny_config
from helpers.train import compose_train, overrides_for, run_cli

from s2s import kernels
from s2s.checkpoint import read_checkpoint
from s2s.distributed import LAYER_UNITS, fsdp_strategy
from s2s.lit_module import Seq2SeqLitModule
from s2s.model import Seq2SeqTransformer
from s2s.optim import adamw, adamw_scale

CONFIG = tiny_config()


def model_and_batch():
    torch.manual_seed(0)
    model = kernels.install(Seq2SeqTransformer(CONFIG))
    ids = torch.randint(2, 64, (4, 7), generator=torch.Generator().manual_seed(1))
    return model, ids


def loss_of(model, ids):
    logits = model(ids, model.shift_right(ids))
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten())


def _worker(rank: int, port: int, out: str, work) -> None:
    """One of two gloo ranks: `work(rank)`, rank 0's result to `out`, then the teardown."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    result = work(rank)
    if rank == 0:
        with open(out, "w") as handle:
            json.dump(result, handle)
    # Teardown in this order (issue 26): every rank done communicating; the FSDP modules,
    # whose reference cycles hold the process group, freed while Python is alive; then the
    # group destroyed, its gloo threads joined here. Left to interpreter exit, a gloo thread
    # freeing a tensor needs the GIL of a finalising interpreter, which ends that thread with
    # pthread_exit through C++ noexcept frames: "terminate called without an active
    # exception", SIGABRT.
    dist.barrier()
    gc.collect()
    dist.destroy_process_group()


def _spawn(work, tmp_path) -> dict:
    """`work(rank) -> dict` on two gloo CPU processes; rank 0's dict."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "result.json"
    mp.spawn(_worker, args=(port, str(out), work), nprocs=2, join=True)
    return json.loads(out.read_text())


def _forward_backward(rank: int) -> dict:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

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
    with FSDP.summon_full_params(sharded, with_grads=True):  # the reduced, whole gradients
        grads = {
            name.replace("_fsdp_wrapped_module.", ""): p.grad.flatten().tolist()
            for name, p in sharded.named_parameters()
        }
    return {"losses": [float(x) for x in losses], "units": units, "local": local, "grads": grads}


@pytest.mark.slow  # spawns processes
def test_fsdp_full_shard_on_two_cpu_processes_matches_the_plain_model(tmp_path):
    result = _spawn(_forward_backward, tmp_path)
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
    # the gradients FSDP reduced over the ranks: those of the mean of the two halves' losses
    ((loss_of(model, ids[:2]) + loss_of(model, ids[2:])) / 2).backward()
    expected_grads = {name: p.grad.flatten() for name, p in model.named_parameters()}
    assert sorted(result["grads"]) == sorted(expected_grads)
    for name, grad in expected_grads.items():
        # atol well under the gradients' size (median of the tensors' largest entries: 3e-3)
        got = torch.tensor(result["grads"][name])
        torch.testing.assert_close(got, grad, rtol=1e-4, atol=1e-6, msg=name)


def test_fsdp_strategy_wraps_the_layer_classes():
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    policy = fsdp_strategy(sharding_strategy="FULL_SHARD").kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy)
    assert set(policy._module_classes) == LAYER_UNITS
    twins = {type(m) for m in kernels.install(Seq2SeqTransformer(CONFIG)).modules()}
    layer_types = [t for t in twins if issubclass(t, tuple(LAYER_UNITS))]
    assert len(layer_types) == 2  # kernel twins are still the layer classes FSDP looks for


class Holder(torch.nn.Module):
    """What Lightning's root FSDP unit wraps: a LightningModule holding the model."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids):
        return loss_of(self.model, ids)


def _clean(name: str) -> str:
    return name.replace("_fsdp_wrapped_module.", "")


def _optimiser_step(rank: int) -> dict:
    """One optimiser step of `adamw_scale` (weight decay on) after clipping, on FSDP's shards
    (this rank's half of the batch) and on a plain copy (the whole batch)."""
    from lightning.pytorch.plugins.precision import FSDPPrecision
    from lightning.pytorch.utilities.exceptions import MisconfigurationException
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    torch.manual_seed(0)
    # untied head and biases: the root unit holds a matrix of its own, and 1-D parameters
    plain = Holder(Seq2SeqTransformer(tiny_config(tie_embeddings=False, attention_bias=True)))
    sharded = FSDP(
        copy.deepcopy(plain),
        auto_wrap_policy=ModuleWrapPolicy(LAYER_UNITS),
        device_id=torch.device("cpu"),
        use_orig_params=True,
    )
    ids = torch.randint(2, 64, (4, 7), generator=torch.Generator().manual_seed(1))
    groups = {}
    for name, module in (("plain", plain), ("sharded", sharded)):
        names = {id(p): _clean(n) for n, p in module.named_parameters()}
        groups[name] = [
            sorted(names[id(p)] for p in g["params"]) for g in adamw(module).param_groups
        ]
    ndims = sorted({p.ndim for p in sharded.parameters()})
    opt_plain = adamw_scale(plain, lr=2e-2, weight_decay=0.1)
    opt_sharded = adamw_scale(sharded, lr=2e-2, weight_decay=0.1)
    ((plain(ids[:2]) + plain(ids[2:])) / 2).backward()  # the mean of the two ranks' losses
    sharded(ids[rank * 2 : rank * 2 + 2]).backward()
    full_norm = float(torch.nn.utils.clip_grad_norm_(plain.parameters(), float("inf")))
    clip = full_norm / 2
    torch.nn.utils.clip_grad_norm_(plain.parameters(), clip)

    # the LightningModule's hook as Lightning calls it under trainer=fsdp: trainer.model is
    # the root, and Lightning's own clipping goes through its FSDP precision plugin
    def lightning_clipping(optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        FSDPPrecision("32-true").clip_gradients(
            optimizer, gradient_clip_val, gradient_clip_algorithm
        )

    hook_self = SimpleNamespace(
        _trainer=True, trainer=SimpleNamespace(model=sharded), clip_gradients=lightning_clipping
    )
    clip_error = None
    try:
        Seq2SeqLitModule.configure_gradient_clipping(hook_self, opt_sharded, clip, "norm")
    except MisconfigurationException as err:  # recorded, so the other checks still run
        clip_error = str(err)
        sharded.clip_grad_norm_(clip)
    squares = sum(p.grad.pow(2).sum() for p in sharded.parameters() if p.grad is not None)
    dist.all_reduce(squares)  # the clipped norm over both ranks' shards
    opt_plain.step()
    opt_sharded.step()
    with FSDP.summon_full_params(sharded):
        full = {_clean(n): p.detach().clone() for n, p in sharded.named_parameters()}
    diff = max(float((full[n] - p.detach()).abs().max()) for n, p in plain.named_parameters())
    return {
        "groups": groups,
        "ndims": ndims,
        "full_norm": full_norm,
        "clip": clip,
        "clipped_norm": float(squares.sqrt()),
        "clip_error": clip_error,
        "max_diff": diff,
    }


@pytest.fixture(scope="module")
def sharded_step(tmp_path_factory) -> dict:
    return _spawn(_optimiser_step, tmp_path_factory.mktemp("fsdp_optimiser"))


@pytest.mark.slow  # spawns processes
def test_param_groups_of_a_wrapped_model_decay_every_matrix(sharded_step):
    assert sharded_step["ndims"] == [1]  # FSDP's flattened shards: every parameter is 1-D
    decayed, kept = sharded_step["groups"]["sharded"]
    assert [decayed, kept] == sharded_step["groups"]["plain"]
    assert "model.lm_head.weight" in decayed  # in the root unit
    assert "model.encoder.layers.0.self_attn.qkv.weight" in decayed  # in a layer unit
    assert len(decayed) == 23  # every matrix but the embedding


@pytest.mark.slow  # spawns processes
def test_fsdp_clipping_bounds_the_norm_over_all_shards(sharded_step):
    assert sharded_step["clip_error"] is None  # Lightning's FSDP plugin refuses norm clipping
    assert sharded_step["full_norm"] > sharded_step["clip"] > 0
    assert sharded_step["clipped_norm"] == pytest.approx(sharded_step["clip"], rel=1e-5)


@pytest.mark.slow  # spawns processes
def test_adamw_scale_step_on_two_ranks_equals_one_device(sharded_step):
    # whole-tensor RMS and weight decay on the same matrices as on one device
    assert sharded_step["max_diff"] < 1e-6


@pytest.mark.slow  # two training processes
def test_train_with_trainer_fsdp_on_two_cpu_processes(tiny_data, tmp_path):
    """`trainer=fsdp` (its clipping, validation and checkpoints) through Lightning with the
    s2s LightningModule, as gloo processes; a hang would time out."""
    overrides = [
        *overrides_for(tiny_data, tmp_path, "pairs"),
        "trainer=fsdp_cpu",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
    ]
    assert compose_train(overrides).trainer.gradient_clip_val == 1.0  # norm clipping is on
    done = run_cli(overrides, cwd=tmp_path, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    said = (done.stdout + done.stderr).count("trainer=fsdp: validation computes val/loss")
    assert said == 1  # once, by rank 0
    metrics = (tmp_path / "run" / "csv" / "metrics.csv").read_text()
    assert "val/loss" in metrics and "val/bleu" not in metrics
    # rank 0 wrote the whole (not sharded) weights
    checkpoint = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    model = Seq2SeqTransformer(checkpoint.config)
    state = checkpoint.state_dict
    assert {k: v.shape for k, v in state.items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
