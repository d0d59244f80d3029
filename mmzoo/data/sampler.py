"""A shuffling, rank-sharding sampler that can resume in the middle of an epoch."""
from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Epoch-seeded permutation, sharded across ranks, with a one-shot skip for mid-epoch resume.

    The order of epoch ``e`` depends only on ``(seed, e)``. Rank ``r`` of ``W`` takes positions
    ``r, r+W, r+2W ...`` of the permutation, so with a per-rank batch ``B`` the union of the ranks'
    i-th batches is exactly the i-th batch of a single process with batch ``W*B``: DDP and one process
    see the same data per optimizer step.

    Args:
        num_samples: dataset length.
        shuffle: permute each epoch (False: identity order).
        seed: base seed of the permutation.
        num_replicas: world size.
        rank: this process's rank.
        drop_last: drop the tail that does not divide evenly across ranks (otherwise it is kept
            unevenly: rank r simply gets fewer samples; fine for evaluation).
    """

    def __init__(self, num_samples: int, shuffle: bool = True, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0, drop_last: bool = True) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.epoch = 0
        self._skip: Optional[tuple[int, int]] = None  # (epoch, samples of this rank to skip)
        self._skip_now = 0
        self._listeners: list = []

    def add_epoch_listener(self, obj) -> None:
        """Objects whose ``set_epoch`` follows this sampler's (datasets seeding their augmentation)."""
        self._listeners.append(obj)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for obj in self._listeners:
            obj.set_epoch(epoch)

    def resume(self, epoch: int, samples_done: int) -> None:
        """Skip the first ``samples_done`` samples (of this rank) the next time epoch ``epoch`` starts."""
        self._skip = (epoch, samples_done)

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        if self.drop_last:
            order = order[: self.num_samples - self.num_samples % self.num_replicas]
        return order[self.rank:: self.num_replicas]

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.num_replicas
        return len(range(self.rank, self.num_samples, self.num_replicas))

    def __iter__(self) -> Iterator[int]:
        indices = self._indices()
        if self._skip is not None and self._skip[0] == self.epoch:
            indices = indices[self._skip[1]:]
            self._skip = None
        return iter(indices)
