"""A callback the training tests inject through the config (`+callbacks.record=...`).

It writes, per rank, one JSON line per training batch: global step, loss, and a fingerprint of
every row of the batch (targets and noised inputs), so tests can compare losses across runs
and data across ranks and epochs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import lightning as L


class RecordBatches(L.Callback):
    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        rows = [
            hashlib.sha1(row.cpu().numpy().tobytes()).hexdigest()[:12] for row in batch["labels"]
        ]
        inputs = [
            hashlib.sha1(row.cpu().numpy().tobytes()).hexdigest()[:12] for row in batch["input_ids"]
        ]
        record = {
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "loss": float(outputs["loss"]),
            "rows": rows,
            "inputs": inputs,
        }
        path = self.path.with_name(f"{self.path.stem}.rank{trainer.global_rank}.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


def read_records(path: Path, rank: int = 0) -> list[dict]:
    file = path.with_name(f"{path.stem}.rank{rank}.jsonl")
    return [json.loads(line) for line in file.read_text().splitlines()]
