"""The Trainer `s2s.trainer.make_trainer` builds, seen from inside a real run: the precision
setting reaches the forward pass, and every checkpoint goes through the atomic writer."""

from __future__ import annotations

import pytest
import torch
from helpers.train import compose_train, overrides_for

from s2s.checkpoint_io import AtomicCheckpointIO
from s2s.lit_module import Seq2SeqLitModule
from s2s.pipeline import train


@pytest.fixture(scope="module")
def bf16_run(tiny_data, tmp_path_factory):
    """A 2-step run under trainer.precision=bf16-mixed, with a validation and a checkpoint at
    step 2; what each loss computation saw of autocast, and the files the atomic writer saved."""
    out = tmp_path_factory.mktemp("bf16")
    seen = {"autocast": [], "logits": [], "saved": []}
    loss, save = Seq2SeqLitModule.loss, AtomicCheckpointIO.save_checkpoint

    def spy_loss(self, batch):
        seen["autocast"].append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        result = loss(self, batch)
        seen["logits"].append(result[1].dtype)
        return result

    def spy_save(self, checkpoint, path, storage_options=None):
        seen["saved"].append(str(path))
        return save(self, checkpoint, path, storage_options)

    overrides = [
        *overrides_for(tiny_data, out),
        "trainer.precision=bf16-mixed",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "callbacks.last_checkpoint.every_n_train_steps=1",
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Seq2SeqLitModule, "loss", spy_loss)
        patch.setattr(AtomicCheckpointIO, "save_checkpoint", spy_save)
        train(compose_train(overrides))
    return out / "run", seen


def test_bf16_mixed_reaches_the_forward_pass(bf16_run):
    _, seen = bf16_run
    assert len(seen["autocast"]) >= 3  # 2 training steps + validation batches
    assert set(seen["autocast"]) == {(True, torch.bfloat16)}
    assert set(seen["logits"]) == {torch.bfloat16}  # the matmuls ran in bf16


def test_checkpoints_are_written_by_the_atomic_io(bf16_run):
    run, seen = bf16_run
    written = {str(p) for p in (run / "checkpoints").iterdir()}
    assert written and written <= set(seen["saved"])
    assert not [p for p in written if ".tmp-" in p]
