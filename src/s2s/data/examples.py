"""From token rows to training examples: packing, truncation, per-item noise, collation.

An item is addressed by the key (epoch, index) that `BucketBatchSampler` yields. Text rows are
noised with a generator seeded by (seed, epoch, index) (fairseq's scheme): a fresh mask every
epoch, the same one on every DDP rank, in every worker process and after a resume. Validation
datasets pin the epoch, so their noise never changes between epochs or runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from s2s.data.cache import Ragged
from s2s.data.noising import NoisedExample, noise_rng

IGNORE_INDEX = -100  # label value the loss skips (padding)
Noiser = Callable[[np.ndarray, np.random.Generator], NoisedExample]


@dataclass(frozen=True, eq=False)
class Example:
    """One (input, target) pair of token ids, both ending in EOS, unpadded."""

    input_ids: np.ndarray  # (S,)
    labels: np.ndarray  # (T,)


def pack(
    rows: Ragged,
    block_length: int,
    separator: Sequence[int],
    *,
    min_length: int | None = None,
    rng: np.random.Generator | None = None,
) -> Ragged:
    """Join all rows (with `separator` between them) and cut the stream into blocks.

    Every block holds `block_length` tokens except possibly the last, so pre-training batches
    carry almost no padding. Blocks cross text boundaries, as in T5's and BART's pre-training.
    With `min_length` (and `rng`), block lengths are drawn uniformly from
    [min_length, block_length] instead, so the model also sees short inputs like the single
    lines it is prompted with later.
    """
    sep = np.asarray(separator, dtype=rows.ids.dtype)
    pieces: list[np.ndarray] = []
    for index in range(len(rows)):
        if index:
            pieces.append(sep)
        pieces.append(rows[index])
    stream = np.concatenate(pieces) if pieces else rows.ids[:0]
    total = len(stream)
    if min_length is None:
        offsets = np.arange(0, total, block_length, dtype=np.int64)
    else:
        if rng is None or not 1 <= min_length <= block_length:
            raise ValueError(f"min_length={min_length} needs an rng and 1 <= it <= {block_length}")
        # Enough draws to cover the stream even if every block is min_length long.
        draws = rng.integers(min_length, block_length + 1, size=total // min_length + 1)
        offsets = np.concatenate([[0], np.cumsum(draws)])
        offsets = offsets[offsets < total]
    return Ragged(stream, np.append(offsets, total))


def truncate(rows: Ragged, max_length: int) -> tuple[Ragged, int]:
    """Cut every row to at most `max_length` tokens; also return how many rows were cut."""
    lengths = rows.lengths
    too_long = lengths > max_length
    if not too_long.any():
        return rows, 0
    keep = np.repeat(np.arange(len(rows)), lengths)  # row of each token
    position = np.arange(len(rows.ids)) - rows.offsets[keep]
    ids = rows.ids[position < max_length]
    new_lengths = np.minimum(lengths, max_length)
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(new_lengths, out=offsets[1:])
    return Ragged(ids, offsets), int(too_long.sum())


def with_eos(ids: np.ndarray, eos_id: int, max_length: int) -> np.ndarray:
    """`ids` cut to max_length - 1 tokens, then EOS."""
    return np.append(ids[: max_length - 1], eos_id).astype(np.int64)


class TextDataset(Dataset):
    """Text rows noised on the fly; item key (epoch, index) -> a fresh `Example`."""

    def __init__(
        self,
        rows: Ragged,
        noiser: Noiser,
        *,
        seed: int,
        eos_id: int,
        max_source_length: int,
        max_target_length: int,
        fixed_epoch: int | None = None,
    ) -> None:
        self.rows, self.noiser, self.seed = rows, noiser, seed
        self.eos_id = eos_id
        self.max_source_length, self.max_target_length = max_source_length, max_target_length
        self.fixed_epoch = fixed_epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, int] | int) -> Example:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        if self.fixed_epoch is not None:
            epoch = self.fixed_epoch
        noised = self.noiser(self.rows[index], noise_rng(self.seed, epoch, index))
        return Example(
            _fit(noised.input_ids, self.eos_id, self.max_source_length),
            _fit(noised.target_ids, self.eos_id, self.max_target_length),
        )

    @property
    def lengths(self) -> np.ndarray:
        return self.rows.lengths


class PairDataset(Dataset):
    """Input -> target pairs, used as they are (truncated, EOS appended)."""

    def __init__(
        self,
        inputs: Ragged,
        targets: Ragged,
        *,
        eos_id: int,
        max_source_length: int,
        max_target_length: int,
    ) -> None:
        self.inputs, self.targets, self.eos_id = inputs, targets, eos_id
        self.max_source_length, self.max_target_length = max_source_length, max_target_length

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, key: tuple[int, int] | int) -> Example:
        index = key[1] if isinstance(key, tuple) else key
        return Example(
            with_eos(self.inputs[index], self.eos_id, self.max_source_length),
            with_eos(self.targets[index], self.eos_id, self.max_target_length),
        )

    @property
    def lengths(self) -> np.ndarray:
        return np.maximum(self.inputs.lengths, self.targets.lengths)


def _fit(ids: np.ndarray, eos_id: int, max_length: int) -> np.ndarray:
    """Noised sequences end in EOS already; cut overlong ones (BART's inserted masks) to fit."""
    if len(ids) <= max_length:
        return ids.astype(np.int64, copy=False)
    return with_eos(ids[:-1], eos_id, max_length)


def collate(
    examples: Sequence[Example], pad_id: int, bos_id: int | None = None
) -> dict[str, torch.Tensor]:
    """Pad a list of examples to the longest in the batch (dynamic padding).

    With `bos_id`, inputs and targets get it in front (BART's `<s> ... </s>` framing of
    Hugging Face checkpoints; the data module then makes both one token shorter than the
    configured limits).
    Returns input_ids (B, S) long, attention_mask (B, S) bool (True = real token) and
    labels (B, T) long with IGNORE_INDEX at padded positions.
    """
    if bos_id is not None:
        examples = [
            Example(np.insert(e.input_ids, 0, bos_id), np.insert(e.labels, 0, bos_id))
            for e in examples
        ]
    batch = len(examples)
    source_length = max(len(e.input_ids) for e in examples)
    target_length = max(len(e.labels) for e in examples)
    input_ids = np.full((batch, source_length), pad_id, dtype=np.int64)
    labels = np.full((batch, target_length), IGNORE_INDEX, dtype=np.int64)
    for row, example in enumerate(examples):
        input_ids[row, : len(example.input_ids)] = example.input_ids
        labels[row, : len(example.labels)] = example.labels
    input_ids_t = torch.from_numpy(input_ids)
    lengths = torch.tensor([len(e.input_ids) for e in examples])
    attention_mask = torch.arange(source_length)[None, :] < lengths[:, None]  # (B, S)
    return {
        "input_ids": input_ids_t,
        "attention_mask": attention_mask,
        "labels": torch.from_numpy(labels),
    }
