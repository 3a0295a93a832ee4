"""The training sampler: class-balanced epochs, sharded over processes, resumable mid-epoch, exactly.

Each epoch's order is a pure function of (seed, epoch), and each drawn row carries its own augmentation seed, so a
run resumed from a checkpoint sees exactly the batches and flips the uninterrupted run would have seen, whatever
the number of DataLoader workers. The order is a global shuffle (the paper's), or with `groups` (each row's tar
shard, packed crops) a shuffle of the shards and of the rows within each window of `window` consecutive shards,
so the processes read a few shards at a time rather than the whole dataset at random.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields (row, augmentation seed) for this process's share of an epoch, from a given batch on."""

    def __init__(
        self,
        labels: np.ndarray,
        batch_size: int,
        *,
        balance: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        groups: np.ndarray | None = None,
        window: int = 4,
    ):
        self.labels = np.asarray(labels)
        self.groups = None if groups is None else np.asarray(groups)
        self.window = window
        self.batch_size = batch_size
        self.balance = balance
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_batch = 0

    def epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """All processes' rows and augmentation seeds for one epoch, a whole number of global batches long."""
        rng = np.random.default_rng([self.seed, epoch])
        rows = np.arange(len(self.labels))
        if self.balance:
            real, fake = rows[self.labels == 0], rows[self.labels == 1]
            small, large = (real, fake) if len(real) <= len(fake) else (fake, real)
            rows = np.concatenate([small, rng.choice(large, size=len(small), replace=False)])
        rows = rng.permutation(rows) if self.groups is None else shard_order(rows, self.groups[rows], rng, self.window)
        global_batch = self.batch_size * self.world_size
        if len(rows) < global_batch:  # a tiny dataset: repeat it to fill one batch per process
            rows = np.resize(rows, global_batch)
        rows = rows[: len(rows) // global_batch * global_batch]
        seeds = rng.integers(0, 2**31 - 1, size=len(rows))
        return rows, seeds

    def batches_per_epoch(self) -> int:
        return len(self.epoch_order(self.epoch)[0]) // (self.batch_size * self.world_size)

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rows, seeds = self.epoch_order(self.epoch)
        mine = slice(self.rank + self.start_batch * self.batch_size * self.world_size, None, self.world_size)
        rows, seeds = rows[mine].copy(), seeds[mine].copy()  # this process's share; the whole epoch's is freed
        return zip(map(int, rows), map(int, seeds), strict=True)  # a Python int at a time, not a list of them

    def __len__(self) -> int:
        return (self.batches_per_epoch() - self.start_batch) * self.batch_size


def shard_order(rows: np.ndarray, groups: np.ndarray, rng: np.random.Generator, window: int) -> np.ndarray:
    """`rows` with their groups (shards) in a random order, shuffled within each window of `window` groups."""
    names, group = np.unique(groups, return_inverse=True)
    position = rng.permutation(len(names))[group]  # each group's place in the epoch
    return rows[np.lexsort((rng.random(len(rows)), position // window))]
