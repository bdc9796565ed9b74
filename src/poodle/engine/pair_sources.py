"""From a config to the stream of frame-pair batches the training loop consumes, and the flow that goes with them.

Sources:
- `synthdrive` + `flow.source=gt`: pairs rendered on the fly with exact flow (no video decoding, no estimator).
- `bdd100k`, `wt`, `folder`, `synthdrive` (its videos): decoded from video files; flow estimated in the step.
- `shards`: pairs and their flow precomputed by `poodle prepare` (poodle.data.shards); no decoding, no estimator.

Batches are drawn with `StepBatchSampler`, so which pairs a rank reads at step s depends only on (seed, s, rank).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from poodle.config import Config
from poodle.engine.distributed import DistInfo
from poodle.engine.run_control import ignore_stop_signals_in_worker
from poodle.engine.sampler import StepBatchSampler
from poodle.objective import PairBatch


class PairSource:
    """Callable `(start_step, stop_step, info) -> iterator of PairBatch` for this rank (see `pretrain`)."""

    def __init__(self, dataset, cfg: Config):
        self.dataset = dataset
        self.cfg = cfg
        self.num_videos = len(dataset)

    def videos_per_rank(self, info: DistInfo) -> int:
        pairs_per_rank = self.cfg.optim.batch_size // info.world_size
        videos, rem = divmod(pairs_per_rank, self.cfg.data.repeat)
        if rem or videos == 0:
            raise ValueError(
                f"optim.batch_size={self.cfg.optim.batch_size} pairs over {info.world_size} rank(s) is "
                f"{pairs_per_rank} pairs per rank, which must be a positive multiple of data.repeat="
                f"{self.cfg.data.repeat} (each video read yields `repeat` pairs)"
            )
        return videos

    def __call__(self, start_step: int, stop_step: int, info: DistInfo) -> Iterator[PairBatch]:
        sampler = StepBatchSampler(
            self.num_videos, self.videos_per_rank(info), info.world_size, info.rank, self.cfg.run.seed,
            start_step, stop_step,
        )  # fmt: skip
        workers = self.cfg.data.workers
        loader = DataLoader(
            self.dataset,
            batch_sampler=sampler,
            num_workers=workers,
            collate_fn=collate_pair_samples,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
            prefetch_factor=4 if workers > 0 else None,
            worker_init_fn=ignore_stop_signals_in_worker,
        )
        yield from loader


def collate_pair_samples(samples: list[dict[str, torch.Tensor]]) -> PairBatch:
    """Each sample holds the R pairs of one video; flatten (videos, R) into one batch of pairs."""

    def cat(key: str) -> torch.Tensor | None:
        if key not in samples[0] or samples[0][key] is None:
            return None
        return torch.cat([s[key] for s in samples])

    return PairBatch(cat("frame_a"), cat("frame_b"), cat("flow_ab"), cat("flow_ba"))


def build_pair_source(cfg: Config):
    """(PairSource, flow estimator or None) for a config. Errors name the fix.

    Flow is produced only for methods that use it (`needs_flow`): BYOL, DINO, DenseCL and PixPro train on the
    frames alone, so they need no RAFT weights and SynthDrive does not render flow for them."""
    from poodle.objective import method_class

    needs_flow = method_class(cfg.method).needs_flow
    if cfg.data.dataset == "shards":
        from poodle.data.shards import ShardPairs

        # Shards carry both flows, so flow.source is not used here (prepare.json records what produced them).
        return PairSource(ShardPairs.from_config(cfg.data), cfg), None
    if cfg.flow.source == "gt":
        if cfg.data.dataset != "synthdrive":
            raise ValueError(
                f"flow.source=gt needs ground-truth flow, which only SynthDrive has (data.dataset is "
                f"{cfg.data.dataset!r}); use --flow dis or --flow raft_large"
            )
        from poodle.data.synthdrive.pairs import SynthDrivePairs

        return PairSource(SynthDrivePairs(cfg.data, seed=cfg.run.seed, with_flow=needs_flow), cfg), None
    from poodle.data.optical_flow import build_flow_estimator
    from poodle.data.pairs import build_pair_dataset

    dataset = build_pair_dataset(cfg.data, seed=cfg.run.seed)
    return PairSource(dataset, cfg), build_flow_estimator(cfg.flow, torch.device("cpu")) if needs_flow else None
