"""Seq2SeqLitModule's own arithmetic, on batches whose answers are worked out by hand: tokens
counted, copy accuracy, warm-up rows per rank, the probe's log keys."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from helpers.generation import tiny_model

from s2s.data.synthetic import CopyWarmup
from s2s.evaluation.masked_lines import MASK, MaskedLine
from s2s.lit_module import Seq2SeqLitModule, copy_accuracy
from s2s.optim import adamw

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
    logged = logged_by(module, monkeypatch)
    module.training_step(batch, 0)
    module.training_step(batch, 1)
    assert module.throughput.tokens == 2 * 14
    assert module._batch_work[0] == 14  # what train/tokens_per_sec divides by its seconds
    assert float(logged["train/padding_fraction"]) == pytest.approx(1 - 14 / 18)


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
