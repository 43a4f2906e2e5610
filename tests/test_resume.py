"""s2s.resume.ResumeState seeds dropout per training batch; here, seen from a real run."""

from __future__ import annotations

import hashlib

import torch
from helpers.train import compose_train, overrides_for

from s2s.lit_module import Seq2SeqLitModule
from s2s.pipeline import train


def test_dropout_masks_differ_between_epochs(tiny_data, tmp_path, monkeypatch):
    """Batch k of every epoch gets fresh dropout masks: the generator each training step
    starts from (re-seeded from seed, batch number and rank) is never the same twice over two
    epochs. (That it is the same in a resumed run: test_train.py's exact-resume test.)"""
    states = {}
    step = Seq2SeqLitModule.training_step

    def spy(self, batch, batch_idx):
        digest = hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest()
        states[(self.current_epoch, batch_idx)] = digest
        return step(self, batch, batch_idx)

    monkeypatch.setattr(Seq2SeqLitModule, "training_step", spy)
    overrides = [
        *overrides_for(tiny_data, tmp_path),
        "trainer.max_steps=6",  # 2 epochs of 3 batches
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=3",
        "trainer.val_check_interval=null",
        "trainer.limit_val_batches=1",
        "eval.num_samples=0",  # validation computes the loss only (no decoding)
        "eval.denoise_lines=0",
    ]
    train(compose_train(overrides))
    assert sorted(states) == [(e, b) for e in (0, 1) for b in range(3)]
    assert len(set(states.values())) == 6  # no two batches share dropout masks
