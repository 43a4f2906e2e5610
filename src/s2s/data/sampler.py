"""Epoch-seeded, DDP-sharded batch samplers: length-bucketed (in-memory data) and streamed.

Each epoch: shuffle all rows with a generator seeded by (seed, epoch); cut the order into
buckets of `bucket_size` batches; sort each bucket by length (so a batch holds rows of similar
length and little padding); cut buckets into batches; shuffle the batches; give rank r the
batches r, r + W, r + 2W, ... (W = world size). Every rank computes the same global order, so
ranks see disjoint data with no communication, and every rank gets the same number of batches
(DDP needs that: the last few are filled by wrapping around).

`StreamBatchSampler` is the same contract for corpora too large for an O(rows) order: all rows
are full-length blocks, so there is nothing to bucket, and the epoch's order is a keyed
pseudo-random permutation computed one batch at a time (`s2s.data.permutation`).

The samplers yield lists of keys (epoch, index): the dataset seeds each item's noise from them.
Lightning calls `set_epoch` at the start of every epoch, on `loader.batch_sampler.sampler`
(not on the batch sampler itself): `sampler` is therefore a small handle that forwards it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from s2s.data.permutation import permuted


class _EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """What both samplers share: epochs, rank sharding with equal counts, skip-to-resume.

    Subclasses say how many global batches an epoch has and what global batch g holds.
    """

    def __init__(self, batch_size: int, *, seed: int, num_replicas: int, rank: int) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        self.batch_size, self.seed = batch_size, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self.sampler = _EpochHandle(self)  # where Lightning looks for set_epoch
        self._skip: tuple[int, int] | None = None  # (epoch, batches) consumed before a resume

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, epoch: int, batches: int) -> None:
        """On the next pass over `epoch`, leave out its first `batches` batches (resume)."""
        self._skip = (epoch, batches)

    def global_batch_count(self) -> int:
        raise NotImplementedError

    def global_batch(self, g: int) -> np.ndarray:
        """Row indices of global batch g of the current epoch."""
        raise NotImplementedError

    def __len__(self) -> int:
        return math.ceil(self.global_batch_count() / self.num_replicas)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        total, per_rank = self.global_batch_count(), len(self)
        skip = 0
        if self._skip is not None and self._skip[0] == self.epoch:
            skip, self._skip = self._skip[1], None
        for k in range(skip, per_rank):
            # Rank r takes global batches r, r + W, ...; the last few wrap around to batch 0.
            batch = self.global_batch((self.rank + k * self.num_replicas) % total)
            yield [(self.epoch, int(i)) for i in batch]


class BucketBatchSampler(_EpochBatchSampler):
    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        bucket_size: int = 50,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__(batch_size, seed=seed, num_replicas=num_replicas, rank=rank)
        self.lengths = np.asarray(lengths)
        self.shuffle, self.bucket_size = shuffle, bucket_size
        self._batches: tuple[int, list[np.ndarray]] | None = None  # (epoch, its batches)

    def global_batches(self) -> list[np.ndarray]:
        """Every batch of this epoch, over all ranks, in order (row indices)."""
        n = len(self.lengths)
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        step = self.batch_size * self.bucket_size
        batches: list[np.ndarray] = []
        for start in range(0, n, step):
            bucket = order[start : start + step]
            bucket = bucket[np.argsort(-self.lengths[bucket], kind="stable")]  # longest first
            batches.extend(np.array_split(bucket, math.ceil(len(bucket) / self.batch_size)))
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def global_batch_count(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def global_batch(self, g: int) -> np.ndarray:
        if self._batches is None or self._batches[0] != self.epoch:
            self._batches = (self.epoch, self.global_batches())
        return self._batches[1][g]


class StreamBatchSampler(_EpochBatchSampler):
    """Batches of `batch_size` consecutive positions of a keyed permutation of range(num_rows)
    (the identity when not shuffling): O(batch) memory and time per batch, any corpus size."""

    def __init__(
        self,
        num_rows: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__(batch_size, seed=seed, num_replicas=num_replicas, rank=rank)
        self.num_rows, self.shuffle = num_rows, shuffle

    def global_batch_count(self) -> int:
        return math.ceil(self.num_rows / self.batch_size)

    def global_batch(self, g: int) -> np.ndarray:
        positions = np.arange(
            g * self.batch_size, min((g + 1) * self.batch_size, self.num_rows), dtype=np.int64
        )
        if not self.shuffle:
            return positions
        return permuted(positions, self.num_rows, key=(self.seed, self.epoch))


class _EpochHandle:
    """Forwards `set_epoch` to the batch sampler that owns it."""

    def __init__(self, owner: _EpochBatchSampler) -> None:
        self.owner = owner

    def set_epoch(self, epoch: int) -> None:
        self.owner.set_epoch(epoch)
