"""Frame-pair datasets (the paper's pair sampling): BDD100K, Walking Tours, a folder of videos, SynthDrive.

One `__getitem__(key)` returns R = `repeat` pairs from one video (BDD100K, folder, SynthDrive) or one 10-s clip
(Walking Tours), each with its own start and gap, decoded in one pass through the file, each cropped by its own
outer crop (shared by the pair's two frames): a dict with `frame_a`, `frame_b` (R, 3, H, W) uint8 (augmentation
runs on the device) and `meta` (R `PairMeta`).

Keys: item = key % len(dataset). Keys past the length are the engine's *sample keys* (pass * len + item, see
poodle.engine.sampler): the same video in a later pass gets different pairs because the key seeds the sampling.

Randomness comes only from a `numpy.random.Generator` seeded by (seed, epoch, key, rank), so a sample does not
depend on which DataLoader worker draws it or on how many workers there are. Either pass sample keys or call
`set_epoch` before creating each epoch's iterator (with `persistent_workers=True` the workers keep the epoch they
were started with).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from torch.utils.data import Dataset

from poodle.config import DataConfig
from poodle.data.manifest import VIDEO_PATTERNS, scan_manifest
from poodle.data.outer_crop import OuterCrop, apply_outer_crop, sample_outer_crop
from poodle.data.video import VideoDecodeError, VideoInfo, read_frames

__all__ = [
    "LAYOUTS", "START_RANGES", "FramePairDataset", "PairDataError", "PairMeta", "build_pair_dataset", "collate_pairs",
    "draw_start",
]  # fmt: skip

log = logging.getLogger("poodle.data")

WT_CLIP_SECONDS = 10.0  # Walking Tours videos are sampled in 10-s clips

# Expected on-disk layouts, quoted in errors (docs/data.md has the long version).
LAYOUTS = {
    "bdd100k": "ROOT/videos/{split}/<name>.mov (BDD100K videos, e.g. videos/train/000d4f89-3bcbe37a.mov)",
    "synthdrive": "ROOT/videos/{split}/<name>.mov (SynthDrive writes the BDD100K layout)",
    "wt": "ROOT/<city>.mp4 or ROOT/videos/[<city>/]<file>.mp4 (one long Walking Tours video per city; "
    "mp4/mov/mkv/avi/webm)",
    "folder": "ROOT/**/<name>.{mp4,mov,mkv,avi,webm} (any videos, nested folders allowed)",
}


START_RANGES = ("release", "full")


def draw_start(rng: np.random.Generator, length: int, dt: int, dt_max: int, mode: str = "release") -> int:
    """Start frame t of a pair (t, t + dt) in an item of `length` frames, uniform over its range.

    "release": t in [0, length - dt_max), the authors' `randint(0, len - 30)` with dt_max = 30 for every dt, so
    the same start range serves all gaps (the last dt_max - dt starts of a shorter gap are never drawn).
    "full": t in [0, length - dt), every start that fits this pair's gap. They agree when dt is fixed (WT), and
    an item too short for dt_max (where the release would fail) uses "full".
    """
    if mode not in START_RANGES:
        raise ValueError(f"start range must be one of {START_RANGES}, got {mode!r}")
    span = length - (dt_max if mode == "release" and length > dt_max else dt)
    return int(rng.integers(0, max(span, 1)))


class PairDataError(RuntimeError):
    """No readable pair could be drawn within the retry budget; the message lists the bad files."""


@dataclass(frozen=True)
class PairMeta:
    """Where a pair came from, for debugging and flow caching."""

    item: int  # dataset item that was asked for (key % len)
    video_index: int  # index into `dataset.videos` actually used (differs from the item's after a retry)
    path: str
    t_a: int  # frame indices (see poodle.data.video for the index <-> time convention)
    t_b: int
    fps: float
    crop: OuterCrop  # scale s, resized size and crop box, the same for both frames

    @property
    def dt(self) -> int:
        return self.t_b - self.t_a


class FramePairDataset(Dataset):
    """Pairs (x_t, x_{t+dt}) from a list of probed videos; `clip_seconds` splits videos into clips (WT)."""

    def __init__(
        self,
        videos: Sequence[VideoInfo],
        *,
        resolution: tuple[int, int] = (512, 1024),
        canvas: tuple[int, int] = (1080, 1920),
        scale: tuple[float, float] = (0.75, 1.25),
        dt_frames: tuple[int, int] = (15, 30),
        dt_seconds: float | None = None,
        repeat: int = 1,
        clip_seconds: float | None = None,
        start_range: str = "release",
        seed: int = 0,
        rank: int = 0,
        max_retries: int = 10,
        decode_threads: int = 1,
    ) -> None:
        if dt_frames[0] < 0 or dt_frames[1] < dt_frames[0]:
            raise ValueError(f"dt_frames must be 0 <= lo <= hi, got {dt_frames}")
        if dt_seconds is not None and dt_seconds <= 0:
            raise ValueError(f"dt_seconds must be > 0, got {dt_seconds}")
        self.resolution = tuple(resolution)
        self.canvas = tuple(canvas)
        self.scale = tuple(scale)
        self.dt_frames = tuple(dt_frames)
        self.dt_seconds = dt_seconds
        self.repeat = int(repeat)
        self.clip_seconds = clip_seconds
        if start_range not in START_RANGES:
            raise ValueError(f"start_range must be one of {START_RANGES}, got {start_range!r}")
        self.start_range = start_range
        self.seed = int(seed)
        self.rank = int(rank)
        self.max_retries = int(max_retries)
        self.decode_threads = decode_threads
        self.epoch = 0
        self.failures: dict[str, str] = {}  # path -> reason (per process: each DataLoader worker has its own)
        self._bad_items: set[int] = set()

        self.videos = [v for v in videos if v.frame_count >= 2]
        for v in videos:
            if v.frame_count < 2:
                log.warning("skipping %s: %d frame(s), a pair needs 2", v.path, v.frame_count)
        if not self.videos:
            raise PairDataError("no video with at least 2 frames to draw pairs from")
        # Items as three flat arrays (cheap to pickle into workers even for 70k videos or thousands of clips).
        video_idx, starts, lengths = [], [], []
        for vi, v in enumerate(self.videos):
            for start, length in self._clips(v):
                video_idx.append(vi)
                starts.append(start)
                lengths.append(length)
        self._item_video = np.asarray(video_idx, dtype=np.int64)
        self._item_start = np.asarray(starts, dtype=np.int64)
        self._item_len = np.asarray(lengths, dtype=np.int64)

    # ------------------------------------------------------------------------------------------- sampling rules

    def dt_range(self, video: VideoInfo) -> tuple[int, int]:
        """Inclusive range of frame gaps for this video: `dt_seconds` converted with its own fps, or `dt_frames`."""
        if self.dt_seconds is not None:
            dt = max(1, round(self.dt_seconds * video.fps))
            return dt, dt
        return self.dt_frames[0], self.dt_frames[1]

    def _clips(self, video: VideoInfo) -> list[tuple[int, int]]:
        """(first frame, frame count) of each item of a video: the whole video, or its clips."""
        n = video.frame_count
        if self.clip_seconds is None:
            return [(0, n)]
        per_clip = max(2, round(self.clip_seconds * video.fps))  # frames_per_clip = 10 s * fps
        dt_max = self.dt_range(video)[1]
        clips = [(s, min(per_clip, n - s)) for s in range(0, n, per_clip)]
        # A trailing partial clip too short for the largest gap is dropped (a one-clip video is kept, dt clamped).
        return [c for c in clips if c[1] > dt_max or (c[0] == 0 and c[1] >= 2)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._item_video)

    def rng_for(self, key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(key), self.rank])

    # ------------------------------------------------------------------------------------------------- loading

    def __getitem__(self, key: int) -> dict[str, Any]:
        """R pairs of item `key % len`: `frame_a`, `frame_b` (R, 3, H, W) uint8 and `meta` (list of R `PairMeta`)."""
        key = int(key)
        if key < 0:
            raise IndexError(f"negative key {key}")
        item = key % len(self)
        rng = self.rng_for(key)
        current = item
        for _ in range(self.max_retries + 1):
            if current not in self._bad_items:
                try:
                    return self._load(item, current, rng)
                except (VideoDecodeError, av.FFmpegError, OSError) as e:
                    self._record_failure(current, e)
            current = self._replacement(rng)
        bad = "; ".join(f"{p}: {r}" for p, r in self.failures.items())
        raise PairDataError(f"no readable video after {self.max_retries} retries (item {item}); bad files: {bad}")

    def _record_failure(self, current: int, error: Exception) -> None:
        # A bad clip of a long video does not condemn the rest of the file (a WT file can be corrupt after 1h50m).
        self._bad_items.add(current)
        path = self.videos[int(self._item_video[current])].path
        reason = getattr(error, "reason", None) or str(error)
        if path not in self.failures:
            log.warning("unreadable video %s (%s); using a random other one instead", path, reason)
        self.failures[path] = reason

    def _replacement(self, rng: np.random.Generator) -> int:
        for _ in range(8):  # prefer items not yet known to be bad
            candidate = int(rng.integers(len(self)))
            if candidate not in self._bad_items:
                return candidate
        return int(rng.integers(len(self)))

    def draw_times(self, current: int, rng: np.random.Generator) -> list[tuple[int, int]]:
        """R (t, t + dt) frame pairs inside item `current`: dt as configured, start by `draw_start` (`start_range`)."""
        video = self.videos[int(self._item_video[current])]
        first, length = int(self._item_start[current]), int(self._item_len[current])
        lo, hi = self.dt_range(video)
        times = []
        for _ in range(self.repeat):
            dt = min(int(rng.integers(lo, hi + 1)), length - 1)  # clamped for clips/videos shorter than the gap
            t = first + draw_start(rng, length, dt, hi, self.start_range)
            times.append((t, t + dt))
        return times

    def _load(self, item: int, current: int, rng: np.random.Generator) -> dict[str, Any]:
        video_index = int(self._item_video[current])
        video = self.videos[video_index]
        times = self.draw_times(current, rng)
        wanted = [t for pair in times for t in pair]
        frames = read_frames(video.path, wanted, video, threads=self.decode_threads)  # one pass, seeks across gaps
        source_hw = frames.shape[1:3]
        h, w = self.resolution
        out_a = np.empty((self.repeat, h, w, 3), dtype=np.uint8)
        out_b = np.empty_like(out_a)
        meta = []
        for r, (t_a, t_b) in enumerate(times):
            crop = sample_outer_crop(rng, source_hw, self.resolution, self.canvas, self.scale)
            out_a[r] = apply_outer_crop(frames[2 * r], crop)
            out_b[r] = apply_outer_crop(frames[2 * r + 1], crop)
            meta.append(PairMeta(item, video_index, video.path, t_a, t_b, video.fps, crop))
        return {
            "frame_a": torch.from_numpy(out_a).permute(0, 3, 1, 2).contiguous(),
            "frame_b": torch.from_numpy(out_b).permute(0, 3, 1, 2).contiguous(),
            "meta": meta,
        }


def collate_pairs(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Flatten B items of R pairs into one batch: `frame_a`, `frame_b` (B*R, 3, H, W) uint8 and `meta` (list)."""
    return {
        "frame_a": torch.cat([s["frame_a"] for s in samples]),
        "frame_b": torch.cat([s["frame_b"] for s in samples]),
        "meta": [m for s in samples for m in s["meta"]],
    }


# ------------------------------------------------------------------------------------------------------ factory


def _dataset_dir(cfg: DataConfig) -> tuple[Path, bool]:
    """(folder to scan, recursive) for the configured dataset."""
    root = Path(cfg.root).expanduser()
    if cfg.dataset in ("bdd100k", "synthdrive"):
        return root / "videos" / cfg.split, False
    if cfg.dataset == "wt":
        return (root / "videos" if (root / "videos").is_dir() else root), True
    return root, True


def build_pair_dataset(
    cfg: DataConfig,
    *,
    seed: int = 0,
    rank: int = 0,
    cache_dir: str | Path | None = None,
    progress: bool | None = None,
    max_retries: int = 10,
) -> FramePairDataset:
    """The frame-pair dataset `cfg.dataset` at `cfg.root` (scanned through the manifest cache)."""
    if cfg.dataset not in LAYOUTS:
        raise ValueError(f"data.dataset={cfg.dataset!r} is not a video dataset; choose one of {sorted(LAYOUTS)}")
    if not cfg.root:
        raise ValueError(f"data.root is empty; expected layout for {cfg.dataset}: {LAYOUTS[cfg.dataset]}")
    folder, recursive = _dataset_dir(cfg)
    manifest = scan_manifest(
        folder,
        VIDEO_PATTERNS,
        recursive,
        cache_dir=cache_dir,
        progress=progress,
        workers=max(1, cfg.workers),
        expected_layout=LAYOUTS[cfg.dataset].replace("{split}", cfg.split),
    )
    return FramePairDataset(
        manifest.videos,
        resolution=tuple(cfg.resolution),
        canvas=tuple(cfg.canvas),
        scale=tuple(cfg.scale),
        dt_frames=tuple(cfg.dt_frames),
        dt_seconds=cfg.dt_seconds,
        repeat=cfg.repeat,
        clip_seconds=WT_CLIP_SECONDS if cfg.dataset == "wt" else None,
        start_range=cfg.start_range,
        seed=seed,
        rank=rank,
        max_retries=max_retries,
    )
