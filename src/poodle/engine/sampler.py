"""A step-indexed, resumable, distributed batch sampler.

The videos a rank reads at global step s are a pure function of (seed, s, rank): the global stream of videos is
a sequence of random permutations of the dataset ("passes"), step s takes the next `videos_per_rank * world`
entries, and each rank its own slice. A resumed run therefore reads exactly what the uninterrupted run would
have read, with no sampler state to save, and ranks never read the same video in the same step.

Each yielded item is a *sample key* = pass * num_videos + video: the dataset takes the video from `key %
num_videos` and seeds its pair sampling with the key, so a video seen in a later pass yields different pairs.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class StepBatchSampler(Sampler[list[int]]):
    def __init__(
        self,
        num_videos: int,
        videos_per_rank: int,
        world_size: int,
        rank: int,
        seed: int,
        start_step: int,
        stop_step: int,
    ):
        if num_videos <= 0:
            raise ValueError("the dataset holds no videos")
        self.num_videos = num_videos
        self.videos_per_rank = videos_per_rank
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.start_step = start_step
        self.stop_step = stop_step
        self._perm_cache: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return max(0, self.stop_step - self.start_step)

    def _permutation(self, pass_index: int) -> np.ndarray:
        if self._perm_cache is None or self._perm_cache[0] != pass_index:
            rng = np.random.default_rng([self.seed, pass_index, 0x5EED])
            self._perm_cache = (pass_index, rng.permutation(self.num_videos))
        return self._perm_cache[1]

    def keys_for_step(self, step: int) -> list[int]:
        first = (step * self.world_size + self.rank) * self.videos_per_rank
        keys = []
        for position in range(first, first + self.videos_per_rank):
            pass_index, offset = divmod(position, self.num_videos)
            keys.append(pass_index * self.num_videos + int(self._permutation(pass_index)[offset]))
        return keys

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.stop_step):
            yield self.keys_for_step(step)
