"""Exact resume: a killed run continues as if it had never stopped.

Lightning restores weights, optimiser, schedule, step and epoch. Two more things decide the next
loss, and this callback makes both a function of where training is, not of process history:

- the data: the batch sampler's order and the noise are seeded by (seed, epoch[, index]); the
  checkpoint records how many batches of the current epoch were consumed, and the sampler skips
  them on resume;
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

    def state_dict(self) -> dict[str, Any]:
        trainer = self.datamodule.trainer
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": trainer.current_epoch, "batches_done": progress.processed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.datamodule.resume_from(state_dict["epoch"], state_dict["batches_done"])
