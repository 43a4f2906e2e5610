"""The training progress bar: Lightning's Rich bar, described by the optimiser step.

Runs are bounded by `trainer.max_steps` with `max_epochs: -1`, where Lightning's bar reads
"Epoch 0/-2"; this one reads "step 120/750" (the step out of max_steps), updated as it goes.
It shows the loss and learning rate the training module read at its last logging step
(`Seq2SeqLitModule.progress`): a value logged for the bar would be read back from the device
at every step.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        if trainer.max_steps is None or trainer.max_steps < 0:
            text = f"epoch {current_epoch}"  # bounded by epochs or time: no step total
        else:
            text = f"step {trainer.global_step}/{trainer.max_steps}"
        return f"{text:{len(self.validation_description)}}"

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        return {**super().get_metrics(trainer, pl_module), **getattr(pl_module, "progress", {})}

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        if self.progress is not None and self.train_progress_bar_id is not None:
            description = self._get_train_description(trainer.current_epoch)
            self.progress.update(self.train_progress_bar_id, description=description)
