"""ResumeState's hooks alone, with stand-ins for the Trainer and the data module: the dropout
seed of each batch, Lightning's batch count moved to the checkpoint's position, and the data
position saved and restored. Exact resume of whole runs is in test_train.py and test_faults.py;
dropout across epochs in test_resume.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from s2s.resume import ResumeState


def progress(processed: int) -> SimpleNamespace:
    """Lightning's `batch_progress.current` of an epoch that processed `processed` batches."""
    return SimpleNamespace(
        ready=processed, started=processed, processed=processed, completed=processed
    )


def trainer_at(*, epoch=0, batches=0, rank=0, total_batch_idx=0) -> SimpleNamespace:
    epoch_loop = SimpleNamespace(batch_progress=SimpleNamespace(current=progress(batches)))
    fit_loop = SimpleNamespace(epoch_loop=epoch_loop, total_batch_idx=total_batch_idx)
    return SimpleNamespace(current_epoch=epoch, global_rank=rank, fit_loop=fit_loop)


def dropout_draw(seed: int, batch: int, rank: int) -> torch.Tensor:
    """The first random numbers torch draws in training batch `batch` on `rank`."""
    data = SimpleNamespace(config=SimpleNamespace(seed=seed))
    with torch.random.fork_rng(devices=[]):  # the tests after this one keep their generator
        ResumeState(data).on_train_batch_start(
            trainer_at(total_batch_idx=batch, rank=rank), None, None, 0
        )
        return torch.rand(4)


def test_dropout_is_seeded_by_seed_batch_and_rank_alone():
    first = dropout_draw(1, 5, 0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)  # whatever came before does not matter
        torch.rand(100)
        assert torch.equal(dropout_draw(1, 5, 0), first)
    draws = [dropout_draw(*key) for key in [(1, 5, 0), (2, 5, 0), (1, 6, 0), (1, 5, 1), (0, 0, 0)]]
    assert len({tuple(d.tolist()) for d in draws}) == 5
    # the batch number counts across epochs (Lightning's total_batch_idx), so no epoch repeats
    # another's masks


def test_batch_and_rank_are_not_interchangeable():
    assert not torch.equal(dropout_draw(0, 1, 0), dropout_draw(0, 0, 1))
    assert not torch.equal(dropout_draw(1, 0, 0), dropout_draw(0, 1, 0))


@pytest.mark.parametrize("processed", [0, 3])
def test_a_resumed_epoch_counts_from_the_checkpoints_batch(processed):
    """The checkpoint was taken after batch 7 of epoch 2 (its micro-batches); Lightning
    restored its own count (`processed`), which moves to 7 in all four counters."""
    data = SimpleNamespace(resume_start=(2, 7))
    trainer = trainer_at(epoch=2, batches=processed)
    ResumeState(data).on_train_start(trainer, None)
    assert vars(trainer.fit_loop.epoch_loop.batch_progress.current) == dict.fromkeys(
        ["ready", "started", "processed", "completed"], 7
    )


@pytest.mark.parametrize("start", [None, (1, 7)])
def test_no_shift_without_a_position_of_this_epoch(start):
    data = SimpleNamespace(resume_start=start)
    trainer = trainer_at(epoch=2, batches=3)
    ResumeState(data).on_train_start(trainer, None)
    assert vars(trainer.fit_loop.epoch_loop.batch_progress.current) == vars(progress(3))


def test_the_data_position_is_saved_and_restored_through_the_data_module():
    calls = []
    data = SimpleNamespace(
        trainer=trainer_at(epoch=4, batches=9),
        data_position=lambda epoch, batches: calls.append((epoch, batches)) or {"rows": 36},
        resume_from=lambda state: calls.append(state),
    )
    callback = ResumeState(data)
    assert callback.state_dict() == {"rows": 36}
    callback.load_state_dict({"rows": 12})
    assert calls == [(4, 9), {"rows": 12}]
