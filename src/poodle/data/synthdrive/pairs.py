"""Training pairs rendered on the fly from SynthDrive, with exact forward and backward flow (`flow.source=gt`).

The scene of a sequence depends only on (seed, index), not on the resolution, so a pair can be rendered at any
scale: the outer crop is realised by rendering the frames at `canvas * s` and cutting the same
`resolution` window from both, and the flow of that render is exact at that scale (no resampling of vectors).
With a dataset root, the sequences are the ones whose videos lie in `ROOT/videos/train` (from `meta.json`);
without one, the `small` preset's training sequences for seed `run.seed`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from poodle.config import DataConfig
from poodle.data.pairs import draw_start
from poodle.data.synthdrive.dataset import INDEX_BASE, PRESETS
from poodle.data.synthdrive.sequence import SynthDriveError, SynthDriveSequence


class SynthDrivePairs(torch.utils.data.Dataset):
    """`dataset[key]` -> `repeat` pairs of one sequence: dict of uint8 frames (R, 3, H, W) and flows (R, 2, H, W).

    `key` is a sample key from `StepBatchSampler` (pass * num_videos + video): the video is `key % num_videos`
    and the pair draws are seeded by the key, so they are reproducible and differ from pass to pass.
    """

    def __init__(self, cfg: DataConfig, seed: int = 0, with_flow: bool = True):
        self.cfg = cfg
        self.with_flow = with_flow  # methods without a flow term skip rendering it
        root = Path(cfg.root) if cfg.root else None
        if root is not None:
            meta_path = root / "meta.json"
            if not meta_path.is_file():
                raise SynthDriveError(
                    f"{root} is not a SynthDrive dataset (no meta.json); create one with `poodle synth {root}` "
                    "or leave data.root empty to render the built-in default"
                )
            meta = json.loads(meta_path.read_text())
            self.world_seed = int(meta["seed"])
            self.num_videos = int(meta["counts"]["videos"][cfg.split])
            self.fps = float(meta["fps"])
            self.seconds = float(meta["counts"]["frames_per_video"]) / self.fps
        else:
            preset = PRESETS["small"]
            self.world_seed = seed
            self.num_videos = preset.train_videos if cfg.split == "train" else preset.val_videos
            self.fps = float(preset.fps)
            self.seconds = preset.seconds
        if self.num_videos <= 0:
            raise SynthDriveError(f"the SynthDrive {cfg.split} split has no videos")
        self.index_base = INDEX_BASE[("video", cfg.split)]
        self.num_frames = max(2, round(self.seconds * self.fps))

    def __len__(self) -> int:
        return self.num_videos

    def _dt_range(self) -> tuple[int, int]:
        if self.cfg.dt_seconds is not None:
            dt = max(1, round(self.cfg.dt_seconds * self.fps))
            return dt, dt
        return self.cfg.dt_frames

    def draws(self, key: int) -> list[dict]:
        """The `repeat` pair draws of sample `key`: video, frames t and t + dt, render scale and size, crop box.

        Rendering uses no randomness, so these draws fully describe `self[key]` (the shard writer stores them).
        """
        video = key % self.num_videos
        rng = np.random.default_rng([self.world_seed, int(key), 0xF10])
        h, w = self.cfg.resolution
        lo, hi = self._dt_range()
        hi = min(hi, self.num_frames - 1)
        lo = min(lo, hi)
        out = []
        for _ in range(self.cfg.repeat):
            s = rng.uniform(*self.cfg.scale)
            ch, cw = self.cfg.canvas
            rh, rw = max(h, _mult8(ch * s)), max(w, _mult8(cw * s))
            dt = int(rng.integers(lo, hi + 1))
            t = draw_start(rng, self.num_frames, dt, hi, self.cfg.start_range)
            top, left = int(rng.integers(0, rh - h + 1)), int(rng.integers(0, rw - w + 1))
            out.append({
                "video": video, "index": self.index_base + video, "t_a": t, "t_b": t + dt, "scale": float(s),
                "resized_hw": (rh, rw), "box": (top, left, h, w),
            })  # fmt: skip
        return out

    def __getitem__(self, key: int) -> dict[str, torch.Tensor]:
        out: dict[str, list[np.ndarray]] = {"frame_a": [], "frame_b": [], "flow_ab": [], "flow_ba": []}
        for d in self.draws(key):
            seq = SynthDriveSequence(self.world_seed, d["index"], resolution=d["resized_hw"], fps=self.fps)
            top, left, h, w = d["box"]
            window = (slice(top, top + h), slice(left, left + w))
            t, t2 = d["t_a"], d["t_b"]
            out["frame_a"].append(seq.frame(t)[window])
            out["frame_b"].append(seq.frame(t2)[window])
            if self.with_flow:
                out["flow_ab"].append(seq.flow(t, t2)[window])
                out["flow_ba"].append(seq.flow(t2, t)[window])
        return {k: torch.from_numpy(np.ascontiguousarray(np.stack(v).transpose(0, 3, 1, 2))) for k, v in out.items()
                if v}  # fmt: skip


def _mult8(x: float) -> int:
    return max(8, int(round(x / 8)) * 8)
