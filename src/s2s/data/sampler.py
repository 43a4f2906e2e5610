"""Length-bucketed, epoch-seeded, DDP-sharded batch sampler.

Each epoch: shuffle all rows with a generator seeded by (seed, epoch); cut the order into
buckets of `bucket_size` batches; sort each bucket by length (so a batch holds rows of similar
length and little padding); cut buckets into batches; shuffle the batches; give rank r the
batches r, r + W, r + 2W, ... (W = world size). Every rank computes the same global order, so
ranks see disjoint data with no communication, and every rank gets the same number of batches
(DDP needs that: the last few are filled by wrapping around).

The sampler yields lists of keys (epoch, index): the dataset seeds each item's noise from them.
Lightning calls `set_epoch` at the start of every epoch, on `loader.batch_sampler.sampler`
(not on the batch sampler itself): `sampler` is therefore a small handle that forwards it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class BucketBatchSampler(Sampler[list[tuple[int, int]]]):
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
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        self.lengths = np.asarray(lengths)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.bucket_size = bucket_size
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self.sampler = _EpochHandle(self)  # where Lightning looks for set_epoch
        self._skip: tuple[int, int] | None = None  # (epoch, batches) consumed before a resume

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, epoch: int, batches: int) -> None:
        """On the next pass over `epoch`, leave out its first `batches` batches (resume)."""
        self._skip = (epoch, batches)

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

    def __len__(self) -> int:
        n_batches = math.ceil(len(self.lengths) / self.batch_size)
        return math.ceil(n_batches / self.num_replicas)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batches = self.global_batches()
        per_rank = len(self)
        mine = [
            batches[(self.rank + k * self.num_replicas) % len(batches)] for k in range(per_rank)
        ]
        skip = 0
        if self._skip is not None and self._skip[0] == self.epoch:
            skip, self._skip = self._skip[1], None
        for batch in mine[skip:]:
            yield [(self.epoch, int(i)) for i in batch]


class _EpochHandle:
    """Forwards `set_epoch` to the batch sampler that owns it."""

    def __init__(self, owner: BucketBatchSampler) -> None:
        self.owner = owner

    def set_epoch(self, epoch: int) -> None:
        self.owner.set_epoch(epoch)
