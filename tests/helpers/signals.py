"""A callback the fault tests inject through the config (`+callbacks.kill=...`): the process
sends itself a signal (through the kernel, as `kill` or SLURM would) when training reaches a
given optimiser step, once or `times` times in a row."""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning as L


class SignalAt(L.Callback):
    def __init__(self, step: int, signum: int = signal.SIGTERM, times: int = 1) -> None:
        self.step, self.signum, self.times = step, signum, times

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step and self.times:
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)
            self.times = 0
