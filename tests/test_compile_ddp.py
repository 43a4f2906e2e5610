"""compile=true under DDP: the trainer keeps dynamo's DDPOptimizer on and says so
(`s2s.trainer.overlap_compiled_ddp`), and the model compiled inside the LightningModule, first
called inside DDP's forward, is split at DDP's gradient buckets: the graphs whose backward lets
each bucket's all-reduce start before the whole backward has run."""

from __future__ import annotations

import json
import logging
import os
import socket
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers.model import tiny_config
from helpers.train import compose_train

from s2s.data.config import DataConfig
from s2s.trainer import make_trainer

LOG = "compile=true under DDP"


def _trainer(tmp_path, *overrides: str):
    cfg = compose_train([*overrides, f"paths.output_dir={tmp_path}"])
    data = DataConfig(train_path="x", val_path="y", batch_size=8)
    return make_trainer(cfg, SimpleNamespace(config=data, micro_batch_size=None))


@pytest.mark.parametrize("off", [False, "no_optimization"])
def test_ddp_with_compile_turns_the_ddp_optimizer_on_and_says_so(
    tmp_path, caplog, monkeypatch, off
):
    with torch._dynamo.config.patch(optimize_ddp=off), caplog.at_level(logging.INFO):
        _trainer(tmp_path, "trainer=ddp_cpu", "compile=true")
        assert torch._dynamo.config.optimize_ddp == "ddp_optimizer"
    assert [r for r in caplog.messages if LOG in r and "'ddp_optimizer'" in r]


@pytest.mark.parametrize(
    "overrides", [("trainer=ddp_cpu", "compile=false"), ("trainer=cpu", "compile=true")]
)
def test_no_ddp_or_no_compile_leaves_dynamo_alone(tmp_path, caplog, overrides):
    with torch._dynamo.config.patch(optimize_ddp=False), caplog.at_level(logging.INFO):
        _trainer(tmp_path, *overrides)
        assert torch._dynamo.config.optimize_ddp is False
    assert not [r for r in caplog.messages if LOG in r]


def _graphs(rank: int, port: int, out: str) -> None:
    """One gloo rank: how many graphs dynamo hands the backend for the LightningModule's
    compiled model, called (as Lightning calls training_step) inside DDP's forward, and the
    same model compiled and called outside DDP."""
    from s2s.lit_module import Seq2SeqLitModule
    from s2s.model import Seq2SeqTransformer
    from s2s.optim import adamw
    from s2s.tokenizer import Tokenizer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    graphs: list[int] = []

    def counting(gm, example_inputs):  # a backend that only counts (no inductor: seconds)
        graphs.append(len(gm.graph.nodes))
        return gm.forward

    compile_ = torch.compile
    torch.compile = lambda model: compile_(model, backend=counting)  # this process only
    tokenizer = Tokenizer.train(["a b c d e f g h"] * 4, vocab_size=512, num_sentinels=4)
    # 2+2 layers of d_model 256: ~8 MB of parameters, several of DDP's 1 MB buckets
    config = tiny_config(d_model=256, d_ff=1024, vocab_size=tokenizer.vocab_size)
    torch.manual_seed(0)
    lit = Seq2SeqLitModule(Seq2SeqTransformer(config), tokenizer, optimizer=adamw, compile=True)
    ids = torch.randint(5, config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)}

    class Step(torch.nn.Module):  # what Lightning's DDP wraps: the module's training step
        def __init__(self) -> None:
            super().__init__()
            self.lit = lit

        def forward(self) -> torch.Tensor:
            return self.lit.loss(batch)[0]

    torch.nn.parallel.DistributedDataParallel(Step(), bucket_cap_mb=1)().backward()
    inside = len(graphs)
    graphs.clear()
    torch.compiler.reset()
    Seq2SeqLitModule(lit.model, tokenizer, optimizer=adamw, compile=True).loss(batch)
    with open(out, "w") as handle:
        json.dump({"inside_ddp": inside, "outside_ddp": len(graphs)}, handle)
    dist.destroy_process_group()


@pytest.mark.slow  # a process, torch.compile
def test_the_compiled_model_is_split_at_ddps_buckets_inside_ddps_forward(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "graphs.json"
    mp.spawn(_graphs, args=(port, str(out)), nprocs=1, join=True)
    counts = json.loads(out.read_text())
    assert counts["outside_ddp"] == 1  # one graph: its backward produces every gradient at once
    assert counts["inside_ddp"] >= 4  # one graph per bucket: the all-reduce can overlap
