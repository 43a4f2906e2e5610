"""Exact resume: a killed run continues as if it had never stopped.

Lightning restores weights, optimiser, schedule, step and epoch. Two more things decide the next
loss, and this callback makes both a function of where training is, not of process history:

- the data: the batch sampler's order and the noise are seeded by (seed, epoch[, index]); the
  checkpoint records the rows of the epoch's order consumed, with the batch split and corpus
  (`s2s.data.position`), and the sampler starts there on resume. Lightning's count of the
  epoch's batches is moved to the same point in the resumed run's batches, so accumulation
  steps and the epoch's end fall where they should when the micro-batch changed;
- dropout: the torch generator is re-seeded before every training batch from
  (seed, batch number, rank), so the dropout masks of batch k are the same in a resumed run.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch

from s2s.data.datamodule import S2SDataModule


class ResumeState(L.Callback):
    def __init__(self, datamodule: S2SDataModule) -> None:
        self.datamodule = datamodule

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        key = [self.datamodule.config.seed, trainer.fit_loop.total_batch_idx, trainer.global_rank]
        torch.manual_seed(int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] >> 1))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        start = self.datamodule.resume_start
        if start is None or start[0] != trainer.current_epoch:
            return
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        shift = start[1] - progress.processed  # checkpoint's batches -> this run's batches
        progress.ready += shift
        progress.started += shift
        progress.processed += shift
        progress.completed += shift

    def state_dict(self) -> dict[str, Any]:
        trainer = self.datamodule.trainer
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        return self.datamodule.data_position(trainer.current_epoch, progress.processed)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.datamodule.resume_from(state_dict)
