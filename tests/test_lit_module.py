"""Seq2SeqLitModule's own arithmetic, on batches whose answers are worked out by hand: tokens
counted, copy accuracy, warm-up rows per rank, the probe's log keys; and a training loop that
reads nothing back from the device between logging steps."""

from __future__ import annotations

import functools
import traceback
from collections import Counter
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from helpers.generation import tiny_model
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from s2s.data.examples import Example, collate
from s2s.data.synthetic import CopyWarmup
from s2s.evaluation.masked_lines import MASK, MaskedLine
from s2s.lit_module import Seq2SeqLitModule, copy_accuracy
from s2s.optim import adamw, warmup_schedule
from s2s.progress import StepProgressBar

P = -100  # IGNORE_INDEX: a label that is not a target token


def module_for(tokenizer, **kwargs) -> Seq2SeqLitModule:
    return Seq2SeqLitModule(tiny_model(tokenizer.vocab_size), tokenizer, optimizer=adamw, **kwargs)


def logged_by(module: Seq2SeqLitModule, monkeypatch) -> dict[str, float]:
    """What `module.log` receives, key -> value (no Trainer needed)."""
    logged: dict[str, float] = {}
    monkeypatch.setattr(module, "log", lambda key, value, **_: logged.__setitem__(key, value))
    return logged


def test_tokens_are_counted_from_source_and_target(tokenizer, monkeypatch):
    # source: 3 + 5 real tokens (attention mask); target: 4 + 2 real labels -> 14 tokens of
    # the 2 x 5 + 2 x 4 = 18 positions
    batch = {
        "input_ids": torch.tensor([[5, 6, 7, 0, 0], [5, 6, 7, 8, 9]]),
        "attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]),
        "labels": torch.tensor([[8, 9, 10, 1], [8, 1, P, P]]),
    }
    module = module_for(tokenizer)
    logged_by(module, monkeypatch)
    module.training_step(batch, 0)
    module.training_step(batch, 1)
    assert module.meter.pending_tokens() == 2 * 14  # counted on the device, not yet read
    reading = module._read_meter()  # what a logging step reads
    assert (reading.tokens, reading.positions) == (2 * 14, 2 * 18)
    assert module.throughput.tokens == 2 * 14 and module.meter.pending_tokens() == 0
    # train/padding_fraction at the logging step: 1 - tokens / positions


def test_copy_accuracy_hand_worked():
    labels = torch.tensor([[5, 6, P], [7, 8, 9]])  # 5 real target tokens
    predicted = torch.tensor([[5, 0, 4], [7, 8, 0]])  # right on 5, 7, 8; the P position ignored
    logits = torch.nn.functional.one_hot(predicted, 12).float()  # (B, T, V): argmax = predicted
    assert float(copy_accuracy(logits, labels)) == pytest.approx(3 / 5)
    assert float(copy_accuracy(torch.nn.functional.one_hot(labels.clamp(min=0), 12), labels)) == 1
    assert float(copy_accuracy(logits, torch.full((2, 3), P))) == 0  # no real token: 0, not NaN


def test_warmup_rows_differ_between_ranks(tokenizer):
    """Each DDP rank trains on its own random warm-up rows (as on its own data rows); the rows
    are a function of (seed, step, micro-batch, rank), so a rank's rows repeat exactly."""
    warmup = CopyWarmup(steps=5, length=6, noised=0.0)
    batch = {"input_ids": torch.zeros(4, 3, dtype=torch.long)}

    def rows(rank: int, batch_idx: int = 0) -> torch.Tensor:
        module = module_for(tokenizer, copy_warmup=warmup, seed=3)
        module._trainer = SimpleNamespace(global_rank=rank, global_step=0)  # what DDP sets
        return module._warmup_batch(batch, batch_idx)["input_ids"]

    assert rows(0).shape == (4, 7)  # 6 random tokens + EOS per row
    assert torch.equal(rows(1), rows(1))
    assert not torch.equal(rows(0), rows(1))
    assert not torch.equal(rows(0), rows(0, batch_idx=1))


def test_the_probe_logs_each_rate_under_its_own_key(tokenizer, monkeypatch):
    lines = [MaskedLine("the quick brown fox jumps", 1, 2)] * 4
    # a copy that fills the mask right, two copies with a wrong fill, one that copies nothing:
    # copy rate 3/4, fill rate 1/4 (s2s.evaluation.masked_lines.score)
    outputs = [
        "the quick brown fox jumps",
        "the slow fox jumps",
        "the red dog fox jumps",
        "nothing like it",
    ]
    assert lines[0].masked == f"the {MASK} fox jumps"
    monkeypatch.setattr("s2s.evaluation.denoise.denoise_outputs", lambda *_, **__: outputs)
    module = module_for(tokenizer, denoise_lines=lines)
    logged = logged_by(module, monkeypatch)
    module._denoise_probe()
    assert logged["val/copy_rate"] == 3 / 4
    assert logged["val/fill_rate"] == 1 / 4
    assert 0 < logged["val/chrf"] < 100


READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy"}


class HostReads(TorchFunctionMode):
    """Records each read of a tensor's values by the host (`Tensor.item`, `int(t)`, `.tolist()`,
    ...: on an accelerator each waits for the device) and each `_local_scalar_dense` (the op
    behind most of them), as (batch index, who: "s2s" or "lightning", what)."""

    def __init__(self) -> None:
        super().__init__()
        self.batch = -1  # the training batch under way (-1 before the first, 8 after the last)
        self.reads: list[tuple[int, str, str]] = []
        outer = self

        class Dispatch(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func is torch.ops.aten._local_scalar_dense.default:
                    outer.record("_local_scalar_dense")
                return func(*args, **(kwargs or {}))

        self.dispatch = Dispatch()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in READS:
            self.record(func.__name__)
        return func(*args, **(kwargs or {}))

    def record(self, what: str) -> None:
        frames = [f for f in traceback.extract_stack() if "test_lit_module" not in f.filename]
        if any(f.name == "on_before_batch_transfer" for f in frames):
            return  # the batch on the host, before it moves: no device to wait for
        who = "s2s" if any("/s2s/" in f.filename for f in frames) else "lightning"
        self.reads.append((self.batch, who, what))


class BatchIndex(L.Callback):
    def __init__(self, reads: HostReads) -> None:
        self.reads = reads

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.reads.batch = batch_idx

    def on_train_end(self, trainer, pl_module) -> None:
        self.reads.batch = trainer.global_step


def batches(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Collated batches of 4 rows, every other one without padding (rows of equal length)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        lengths = rng.integers(3, 9, size=(4, 2)) if i % 2 else np.full((4, 2), 6)
        rows = [Example(rng.integers(5, 90, s), rng.integers(5, 90, t)) for s, t in lengths]
        out.append(collate(rows, pad_id=0))
    return out


def test_training_reads_the_device_once_per_logging_interval(tokenizer, tmp_path):
    """Over 8 steps logging every 4, with a progress bar and a learning-rate schedule: no batch
    between logging steps reads anything back from the device, and at a logging step this
    module reads once (the token count and loss, together). Lightning's own reads, there, are
    its logger's conversion of each logged value (after the first, the device is idle)."""
    model = tiny_model(tokenizer.vocab_size, positions="t5_relative").train()
    schedule = functools.partial(warmup_schedule, warmup_steps=2, total_steps=8)
    module = Seq2SeqLitModule(model, tokenizer, optimizer=adamw, scheduler=schedule)
    reads = HostReads()
    trainer = L.Trainer(
        max_steps=8,
        log_every_n_steps=4,
        accelerator="cpu",
        logger=L.pytorch.loggers.CSVLogger(tmp_path),
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[StepProgressBar(), BatchIndex(reads)],
    )
    data = torch.utils.data.DataLoader(batches(8), batch_size=None)
    with reads, reads.dispatch:
        trainer.fit(module, train_dataloaders=data)
    assert trainer.global_step == 8
    logging_batches = {3, 7}  # after steps 4 and 8
    during = [r for r in reads.reads if 0 <= r[0] < 8]  # not set-up, not tear-down
    assert during and [r for r in during if r[0] not in logging_batches] == []
    ours = Counter((batch, what) for batch, who, what in during if who == "s2s")
    for batch in logging_batches:
        assert ours[(batch, "tolist")] == 1 and ours[(batch, "_local_scalar_dense")] == 0
    assert sum(ours.values()) == len(logging_batches)
    # what the reads fed: the logs at steps 4 and 8, and the progress bar
    assert set(module.progress) == {"train/loss", "train/lr"}
    assert module.throughput.tokens == sum(
        int(b["attention_mask"].sum() + (b["labels"] != -100).sum()) for b in batches(8)
    )
