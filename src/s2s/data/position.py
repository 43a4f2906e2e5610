"""Where training is in its data, as a checkpoint records it, and how a resume reads it back.

A position is ROWS of the epoch's order consumed over all devices (`s2s.data.sampler`: step s
holds positions [s*B, (s+1)*B) of the order, B the global batch), not batches of one device:
a resume with another micro-batch, accumulation or device count starts at the same row, and
with the same global batch the same rows fall in the same steps. The checkpoint also records
the split it was trained with and the corpus, so a resume says what changed:

- micro-batch, accumulation, devices: exact; logged.
- global batch: every row of the epoch still comes once (the bucketed order keeps the
  checkpoint's B until the epoch ends), but the steps group them otherwise: a warning.
- corpus (fingerprint, rows) or data seed: the row number points into another order, so the
  resume is refused with one line, unless `data.force_resume=true` (then: a warning).

Checkpoints written before positions were rows hold `batches_done` only (batches per device):
they resume as they always did, that many batches of this run's micro-batch x devices.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)

SPLIT = ("micro_batch_size", "accumulation", "world_size")  # how B is cut: resumes exactly
SAME_DATA = ("corpus", "num_rows", "seed")  # otherwise the rows are another order's


@dataclass(frozen=True)
class DataPosition:
    epoch: int
    rows: int  # rows of the epoch's order consumed, over all devices
    global_batch: int  # data.batch_size: rows per optimiser step
    micro_batch_size: int  # rows per device per forward
    accumulation: int
    world_size: int
    seed: int  # data.seed: the order's key
    corpus: str  # fingerprint of the training rows
    num_rows: int  # rows in an epoch

    def state(self, batches_done: int) -> dict[str, Any]:
        """What a checkpoint stores (`batches_done` too, for readers of the older format)."""
        return asdict(self) | {"batches_done": batches_done}


@dataclass(frozen=True)
class Resume:
    """Where a resumed run starts: `row` of `epoch`, in the order cut with `global_batch`."""

    epoch: int
    row: int
    global_batch: int


def resume_point(saved: dict[str, Any], now: DataPosition, *, force: bool) -> Resume:
    """The start of a run resumed from a checkpoint's `saved` position, this run being `now`
    (its `epoch` and `rows` unused). Raises ValueError (one line) when the checkpoint's rows
    belong to another corpus or seed and not `force`; logs what else changed."""
    epoch = int(saved["epoch"])
    if "rows" not in saved:  # before rows were recorded: batches of this run's split
        rows = int(saved["batches_done"]) * now.micro_batch_size * now.world_size
        return Resume(epoch, rows, now.global_batch)
    rows, batch = int(saved["rows"]), int(saved["global_batch"])
    at = f"row {rows} of epoch {epoch}"
    other = _changes(saved, now, SAME_DATA)
    if other and not force:
        raise ValueError(
            f"ckpt_path: the checkpoint's data position ({at}) belongs to another corpus or "
            f"data seed ({other}): start a new run, or set data.force_resume=true to continue "
            "from that row of this run's data anyway"
        )
    if other:
        log.warning("data.force_resume=true: %s changed; continuing at %s", other, at)
        return Resume(epoch, rows, now.global_batch)
    if batch != now.global_batch:
        log.warning(
            "data.batch_size changed since the checkpoint (%d -> %d): continuing at %s; every "
            "row of the epoch still comes once, but steps group rows otherwise than the "
            "uninterrupted run would",
            batch,
            now.global_batch,
            at,
        )
    elif split := _changes(saved, now, SPLIT):
        log.info("resuming at %s with another split of the global batch (%s): exact", at, split)
    return Resume(epoch, rows, batch)


def _changes(saved: dict[str, Any], now: DataPosition, keys: tuple[str, ...]) -> str:
    """'key a -> b, ...' for the keys whose values differ, or ''."""
    values = asdict(now)
    return ", ".join(
        f"{key} {saved.get(key)} -> {values[key]}" for key in keys if saved.get(key) != values[key]
    )
