"""StreamPETR's streaming train sampler (its GroupInBatchSampler), for the harness's
`Workload.train_batch_sampler` contract.

The global batch has `batch_size * world_size` slots; each slot plays one sub-sequence
(dataset `sequence_ids`, frames in order) after another, drawing the next sub-sequence at
random when one ends. Rank r owns slots [r * batch_size, (r + 1) * batch_size), so the
ranks never share a slot and each sees its sequences in order. A slot's draws depend on
(seed, epoch, global slot) only: any world size yields the same per-slot streams.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np


class StreamingBatchSampler:
    def __init__(self, sequence_ids: Sequence[int], batch_size: int, world_size: int = 1, rank: int = 0,
                 seed: int = 0) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        ids = np.asarray(sequence_ids, np.int64)
        self.groups = [np.flatnonzero(ids == g) for g in np.unique(ids)]
        self.batch_size, self.world_size, self.rank, self.seed = batch_size, world_size, rank, seed
        self.epoch = 0
        self.num_samples = len(ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        """Batches per epoch per rank: the dataset once over the global batch."""
        return self.num_samples // (self.batch_size * self.world_size)

    def _slot_stream(self, slot: int) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch, slot])
        while True:
            for g in rng.permutation(len(self.groups)):
                yield from self.groups[g].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        first = self.rank * self.batch_size
        streams = [self._slot_stream(first + k) for k in range(self.batch_size)]
        for _ in range(len(self)):
            yield [next(s) for s in streams]
