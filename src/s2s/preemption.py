"""SIGTERM / SIGINT stop a run at the end of its optimiser step with a checkpoint to resume from.

What a preempted job needs (SLURM's scancel and time limit, a spot-instance notice, Ctrl-C): on
the first signal the run finishes the optimiser step it is in, saves checkpoints/last.ckpt at
that step (every rank at the same step), and raises `s2s.cli.Interrupted`; `train()` writes the
run report and the error boundary prints `stopped: ...` and exits with 128 + the signal (143,
130). `ckpt_path=last` then resumes exactly (s2s.resume). A second signal ends the process at
once (its default action): the atomic writes (s2s.files) leave the previous checkpoint whole.

Ranks agree on the step through one all-reduce of a flag per optimiser step on a CPU (gloo)
group of its own: no device synchronisation, and a signal that reaches only some ranks (kill
PID, Lightning's launcher) stops them all at the same step. A validation in progress finishes
before the step ends.

The handlers replace Lightning's SIGTERM handler from the start of training to its end (that
one only stops, at a batch, without a checkpoint). SIGUSR1, Lightning's SLURM auto-requeue signal
(`#SBATCH --signal=SIGUSR1@90`), is left to Lightning (docs/reliability.md).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist

from s2s.cli import Interrupted

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preemption(L.Callback):
    def __init__(self, checkpoint: Path) -> None:
        self.checkpoint = checkpoint  # where the stopping step is saved (checkpoints/last.ckpt)
        self.received = 0  # the signal received, 0 before any
        self._previous: dict[int, Any] = {}
        self._group: Any = None
        self._step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.world_size > 1 and dist.is_initialized():
            self._group = dist.new_group(backend="gloo")  # every rank calls this hook
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
            for signum in SIGNALS:
                signal.signal(signum, self._handle)

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: Any, exception: BaseException) -> None:
        self._restore()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self._step:  # inside an accumulation: no step ended here
            return
        self._step = trainer.global_step
        signum = self._agreed_signal()
        if not signum:
            return
        for callback in trainer.checkpoint_callbacks:
            mine = Path(callback.dirpath or "") == self.checkpoint.parent
            if getattr(callback, "save_last", False) and mine:
                # saved as the callback's own last.ckpt, which the resumed run then overwrites
                # (a file it did not write would make it save last-v1.ckpt beside it)
                callback.last_model_path = str(self.checkpoint)
        trainer.save_checkpoint(self.checkpoint)
        name = signal.Signals(signum).name
        raise Interrupted(
            f"{name} at step {self._step}: saved {self.checkpoint}; resume with ckpt_path=last "
            f"hydra.run.dir={self.checkpoint.parent.parent}",
            signum,
        )

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received:  # the second signal: its default action, now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signum
        log.warning(
            "%s: saving a checkpoint at the end of this step, then stopping (send it again to "
            "stop at once)",
            signal.Signals(signum).name,
        )

    def _agreed_signal(self) -> int:
        """The signal any rank received (the largest number), the same on every rank."""
        if self._group is None:
            return self.received
        flag = torch.tensor([self.received])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return int(flag)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            if handler is not None:
                signal.signal(signum, handler)
        self._previous = {}
