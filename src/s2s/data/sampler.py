"""Epoch-seeded, DDP-sharded batch samplers: length-bucketed (in-memory data) and streamed.

Each epoch has an ORDER: every row once, in an order seeded by (seed, epoch). Micro-batch j is
positions [j*m, (j+1)*m) of it (m = micro-batch size) and goes to rank j % W (W = world size),
so an optimiser step (W ranks x `accumulation` micro-batches) consumes positions
[s*B, (s+1)*B) with B the global batch, however B is split into micro-batches, accumulation
and devices. That makes a data position one number, the rows of the order consumed
(`s2s.data.position`), and a resume with another split the same rows in the same steps. Every
rank computes the same order, so ranks see disjoint data with no communication, and every rank
gets the same number of batches (DDP needs that: the last few wrap around to the epoch's start,
as `torch.utils.data.DistributedSampler` pads by default; `wrapped_rows` counts them, e.g. 4
rows seen twice an epoch at 103 rows, micro-batch 4, 3 ranks). Wrapping, not dropping the
remainder, keeps a resume exact under another geometry: every position of the order is
consumed once an epoch whatever the micro-batch and device count, so `s2s.data.position`'s
row count means the same rows before and after; which rows a dropped remainder loses would
change with the geometry.

- `BucketBatchSampler` (in-memory data): shuffle all rows; cut the order into buckets of
  `bucket_size` global batches; sort each bucket by length (so a batch holds rows of similar
  length and little padding); cut buckets into global batches; shuffle those (a short last one
  stays last). The order depends on B, so a resume after B changed keeps the checkpoint's B
  for the rest of that epoch.
- `StreamBatchSampler` (corpora too large for an O(rows) order): all rows are full-length
  blocks, so there is nothing to bucket, and the order is a keyed pseudo-random permutation
  computed one batch at a time (`s2s.data.permutation`), the same for every B.

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
    """What both samplers share: epochs, rank sharding with equal counts, resume at a row.

    Subclasses say how many rows an epoch has and which rows sit at positions [start, stop)
    of its order.
    """

    def __init__(
        self,
        batch_size: int,
        *,
        seed: int,
        num_replicas: int,
        rank: int,
        global_batch_size: int | None = None,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        self.batch_size, self.seed = batch_size, seed
        self.num_replicas, self.rank = num_replicas, rank
        # rows per optimiser step; only the bucketed order depends on it
        self.global_batch_size = global_batch_size or batch_size * num_replicas
        self.epoch = 0
        self.sampler = _EpochHandle(self)  # where Lightning looks for set_epoch
        self._start: tuple[int, int, int] | None = None  # (epoch, row, order's global batch)

    @property
    def num_rows(self) -> int:
        raise NotImplementedError

    def rows_at(self, start: int, stop: int, global_batch_size: int) -> np.ndarray:
        """Row indices at positions [start, stop) of the current epoch's order."""
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, row: int, global_batch_size: int | None = None) -> None:
        """Start every pass over `epoch` at position `row` of its order (cut with
        `global_batch_size`, default this sampler's), rows before it already consumed."""
        row = min(max(row, 0), self.num_rows)
        self._start = (epoch, row, global_batch_size or self.global_batch_size)

    def _pass(self) -> tuple[int, int]:
        """(first position, order's global batch) of the current epoch's pass."""
        if self._start is not None and self._start[0] == self.epoch:
            return self._start[1], self._start[2]
        return 0, self.global_batch_size

    def __len__(self) -> int:
        """Batches a rank gets in a whole epoch (the same on every rank)."""
        return math.ceil(math.ceil(self.num_rows / self.batch_size) / self.num_replicas)

    def remaining(self) -> int:
        """Batches this rank gets in the current epoch's pass, from its first position on."""
        first, _ = self._pass()
        return math.ceil(math.ceil((self.num_rows - first) / self.batch_size) / self.num_replicas)

    @property
    def wrapped_rows(self) -> int:
        """Rows of a whole epoch seen twice so that every rank gets `len(self)` batches."""
        m, n, whole = self.batch_size, self.num_rows, math.ceil(self.num_rows / self.batch_size)
        extra = len(self) * self.num_replicas - whole  # micro-batches past the order's end
        return sum(min(m, n - (k % whole) * m) for k in range(extra))

    def rows_done(self, batches: int) -> int:
        """Rows of the current epoch's order consumed over all ranks once each rank finished
        `batches` of the epoch's `len(self)` (a resumed pass counts from len - remaining)."""
        first, _ = self._pass()
        done = max(batches - (len(self) - self.remaining()), 0)
        return min(self.num_rows, first + done * self.batch_size * self.num_replicas)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        first, order_batch = self._pass()
        m, n = self.batch_size, self.num_rows
        total, whole = math.ceil((n - first) / m), math.ceil(n / m)
        for k in range(self.remaining()):
            # Rank r takes micro-batches r, r + W, ... of the pass; the last few wrap around to
            # the start of the epoch, so every rank gets as many.
            j = self.rank + k * self.num_replicas
            start = first + j * m if j < total else ((j - total) % whole) * m
            rows = self.rows_at(start, min(start + m, n), order_batch)
            yield [(self.epoch, int(i)) for i in rows]


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
        global_batch_size: int | None = None,
    ) -> None:
        super().__init__(
            batch_size,
            seed=seed,
            num_replicas=num_replicas,
            rank=rank,
            global_batch_size=global_batch_size,
        )
        self.lengths = np.asarray(lengths)
        self.shuffle, self.bucket_size = shuffle, bucket_size
        self._order: tuple[tuple[int, int], np.ndarray] | None = None  # (epoch, B) -> order

    @property
    def num_rows(self) -> int:
        return len(self.lengths)

    def order(self, global_batch_size: int) -> np.ndarray:
        """(rows,) every row of this epoch once: length-sorted buckets cut into global batches
        of `global_batch_size` rows, those shuffled (a short last one kept last)."""
        n, batch = len(self.lengths), global_batch_size
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        step = batch * self.bucket_size
        for start in range(0, n, step):
            bucket = order[start : start + step]
            # longest first
            order[start : start + step] = bucket[np.argsort(-self.lengths[bucket], kind="stable")]
        full = n // batch
        if self.shuffle and full:
            batches = order[: full * batch].reshape(full, batch)  # (full batches, B)
            order[: full * batch] = batches[rng.permutation(full)].reshape(-1)
        return order

    def rows_at(self, start: int, stop: int, global_batch_size: int) -> np.ndarray:
        key = (self.epoch, global_batch_size)
        if self._order is None or self._order[0] != key:
            self._order = (key, self.order(global_batch_size))
        return self._order[1][start:stop]


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
        global_batch_size: int | None = None,
    ) -> None:
        super().__init__(
            batch_size,
            seed=seed,
            num_replicas=num_replicas,
            rank=rank,
            global_batch_size=global_batch_size,
        )
        self._num_rows, self.shuffle = num_rows, shuffle

    @property
    def num_rows(self) -> int:
        return self._num_rows

    def rows_at(self, start: int, stop: int, global_batch_size: int) -> np.ndarray:
        positions = np.arange(start, stop, dtype=np.int64)
        if not self.shuffle:
            return positions
        return permuted(positions, self.num_rows, key=(self.seed, self.epoch))


class _EpochHandle:
    """Forwards `set_epoch` to the batch sampler that owns it."""

    def __init__(self, owner: _EpochBatchSampler) -> None:
        self.owner = owner

    def set_epoch(self, epoch: int) -> None:
        self.owner.set_epoch(epoch)
