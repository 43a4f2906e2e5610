"""Copy warm-up: random rows to copy, keyed by step, and the training loop that uses them."""

from __future__ import annotations

import pytest
import torch
from test_train import compose_train, overrides_for, tiny_data  # noqa: F401

from s2s.data.examples import IGNORE_INDEX
from s2s.data.synthetic import CopyWarmup, copyable_ids, random_copy_batch, warmup_generator
from s2s.lit_module import Seq2SeqLitModule
from s2s.pipeline import train


def test_random_rows_are_their_own_target_and_hold_no_special_token(tokenizer):
    ids = copyable_ids(tokenizer)
    batch = random_copy_batch(5, 7, ids, tokenizer.eos_id, warmup_generator(0, 3, 0, 0))
    assert batch["input_ids"].shape == (5, 8)
    assert torch.equal(batch["input_ids"], batch["labels"])
    assert bool(batch["attention_mask"].all())
    assert bool((batch["input_ids"][:, -1] == tokenizer.eos_id).all())
    body = batch["input_ids"][:, :-1]
    assert not set(body.flatten().tolist()) & set(tokenizer.special_ids)
    assert len(ids) == tokenizer.vocab_size - len(tokenizer.special_ids)


def test_rows_depend_only_on_seed_step_micro_batch_and_rank(tokenizer):
    ids = copyable_ids(tokenizer)

    def rows(*key):
        return random_copy_batch(4, 6, ids, tokenizer.eos_id, warmup_generator(*key))["labels"]

    assert torch.equal(rows(1, 2, 0, 0), rows(1, 2, 0, 0))
    for other in [(2, 2, 0, 0), (1, 3, 0, 0), (1, 2, 1, 0), (1, 2, 0, 1)]:
        assert not torch.equal(rows(1, 2, 0, 0), rows(*other)), other


@pytest.mark.parametrize("values", [dict(steps=-1), dict(length=0)])
def test_bad_warmup_settings_are_refused(values):
    with pytest.raises(ValueError, match="copy_warmup"):
        CopyWarmup(**values)


def test_warmup_steps_train_on_random_rows_then_on_the_data(tiny_data, tmp_path, monkeypatch):  # noqa: F811
    """Steps before copy_warmup.steps see random copy rows; later steps see the data's rows."""
    seen = []
    original = Seq2SeqLitModule.loss

    def spy(self, batch):
        if self.training:
            labels = [t for t in batch["labels"][0].tolist() if t != IGNORE_INDEX]
            seen.append((self.global_step, batch["input_ids"][0].tolist(), labels))
        return original(self, batch)

    monkeypatch.setattr(Seq2SeqLitModule, "loss", spy)
    overrides = [
        *overrides_for(tiny_data, tmp_path),
        "copy_warmup.steps=2",
        "copy_warmup.length=5",
        "trainer.max_steps=4",
    ]
    train(compose_train(overrides))
    assert [step for step, _, _ in seen] == [0, 1, 2, 3]
    for _, inputs, labels in seen[:2]:
        assert inputs == labels and len(inputs) == 6  # 5 random tokens + EOS
    for _, inputs, labels in seen[2:]:
        assert inputs != labels and len(labels) > 6  # noised text rows
