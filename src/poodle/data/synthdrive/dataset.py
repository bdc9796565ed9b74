"""Write SynthDrive to disk in the BDD100K layout (videos, 10k images + sem_seg masks) plus exact flow files.

    OUT/videos/{train,val}/<name>.mov                          H.264 (libx264, yuv420p) at `fps`
    OUT/images/10k/{train,val}/<name>.jpg                      labelled frames from *other* sequences
    OUT/labels/sem_seg/masks/{train,val}/<name>.png            8-bit trainIds, 255 = ignore
    OUT/labels/sem_seg/colormaps/{train,val}/<name>.png        palette colours (RGB)
    OUT/images/100k/{train,val}/<name>.jpg                     the same labelled frames (hard links, else copies)
    OUT/labels/det_20/det_{train,val}.json                     detection boxes of those frames (BDD100K det_20)
    OUT/flow/{train,val}/<video>_<t>_<t2>.flo (+ _occ.png)     forward flow t -> t2 and occlusion (255)
    OUT/flow/{train,val}.json                                  index of the flow pairs
    OUT/stats.md, OUT/meta.json (written last), OUT/preview.png (optional)

Everything is written into a sibling `OUT.partial-XXXX` folder that is renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from poodle.data.class_stats import class_statistics
from poodle.data.classes import BDD100K_CLASSES, colorize
from poodle.data.synthdrive.boxes import (
    DET_CATEGORY_OF_TRAIN_ID,
    MIN_BOX_PIXELS,
    OCCLUSION_MARGIN_M,
    detection_labels,
    instance_table,
)
from poodle.data.synthdrive.flo import write_flo
from poodle.data.synthdrive.preview import write_preview
from poodle.data.synthdrive.sequence import SynthDriveError, SynthDriveSequence, check_resolution
from poodle.output_dir import MARKER, OutputDirError, check_replaceable, write_marker
from poodle.progress import progress_bar

GENERATOR_VERSION = "1.1"  # 1.1: det_20 detection labels and images/100k
SPLITS = ("train", "val")
# Sequence index ranges per role, so videos, labelled images and splits never share a sequence.
INDEX_BASE = {
    ("video", "train"): 0,
    ("video", "val"): 1_000_000,
    ("image", "train"): 2_000_000,
    ("image", "val"): 3_000_000,
}
FLOW_DT_SECONDS = (0.5, 1.0)  # 15..30 frames at 30 fps


@dataclass(frozen=True)
class Preset:
    resolution: tuple[int, int]
    train_videos: int
    val_videos: int
    train_images: int
    val_images: int
    seconds: float = 3.0
    fps: int = 30
    flow_pairs: int = 2  # per video

    def counts_error(self) -> str | None:
        checks = [
            ("train videos", self.train_videos, 0, 10_000),
            ("val videos", self.val_videos, 0, 10_000),
            ("train images", self.train_images, 1, 100_000),
            ("val images", self.val_images, 0, 100_000),
            ("flow pairs per video", self.flow_pairs, 0, 100),
            ("fps", self.fps, 1, 240),
        ]
        for name, value, lo, hi in checks:
            if not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
                return f"{name} must be an integer in [{lo}, {hi}], got {value!r}"
        if not 0.5 <= self.seconds <= 600:
            return f"video length must be in [0.5, 600] seconds, got {self.seconds}"
        if self.flow_pairs and self.frames_per_video <= self.flow_dt[0]:
            return (
                f"videos of {self.frames_per_video} frames are too short for flow pairs "
                f"(need more than {self.flow_dt[0]} frames; raise the length or set flow pairs to 0)"
            )
        return None

    @property
    def frames_per_video(self) -> int:
        return max(1, round(self.seconds * self.fps))

    @property
    def flow_dt(self) -> tuple[int, int]:
        return max(1, round(FLOW_DT_SECONDS[0] * self.fps)), max(1, round(FLOW_DT_SECONDS[1] * self.fps))


PRESETS: dict[str, Preset] = {
    # The demo and the tests: generates in seconds.
    "small": Preset(resolution=(128, 256), train_videos=8, val_videos=2, train_images=64, val_images=16),
    # A richer set for experiments (a few minutes on one core).
    "default": Preset(
        resolution=(256, 512),
        train_videos=24,
        val_videos=6,
        train_images=500,
        val_images=100,
        seconds=4.0,
        flow_pairs=4,
    ),
}


def sequence_name(seed: int, kind: str, split: str, index: int) -> str:
    """A BDD100K-looking, deterministic name such as '3f2a9c1e-0b7d44aa'."""
    h = hashlib.sha1(f"synthdrive-{seed}-{kind}-{split}-{index}".encode()).hexdigest()
    return f"{h[:8]}-{h[8:16]}"


def labelled_image_source(seed: int, split: str, i: int, frames_per_video: int) -> tuple[int, int]:
    """(sequence index, frame) of labelled image i of a split: one sequence per image, a random frame."""
    index = INDEX_BASE[("image", split)] + i
    return index, int(np.random.default_rng([seed, index, 11]).integers(0, frames_per_video))


def _write_video(path: Path, frames, fps: int, size: tuple[int, int]) -> None:
    import av

    h, w = size
    with av.open(str(path), mode="w", format="mov") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_image(root: Path, split: str, name: str, frame: np.ndarray, labels: np.ndarray) -> None:
    Image.fromarray(frame).save(root / "images" / "10k" / split / f"{name}.jpg", quality=92)
    Image.fromarray(labels).save(root / "labels" / "sem_seg" / "masks" / split / f"{name}.png")
    Image.fromarray(colorize(labels)).save(root / "labels" / "sem_seg" / "colormaps" / split / f"{name}.png")


def _link_det_image(root: Path, split: str, name: str) -> str:
    """images/100k/<split>/<name>.jpg: a hard link to the images/10k file (a copy where links are unsupported)."""
    src = root / "images" / "10k" / split / f"{name}.jpg"
    dst = root / "images" / "100k" / split / f"{name}.jpg"
    try:
        os.link(src, dst)
        return "hard link"
    except OSError:
        shutil.copyfile(src, dst)
        return "copy"


DET_SIZE_EDGES = (32**2, 96**2)  # COCO's small / medium / large areas (pycocotools areaRng)


class _DetStats:
    """Box counts per split for meta.json and stats.md."""

    def __init__(self):
        self.split: dict[str, dict] = {}

    def begin(self, split: str) -> None:
        self.split[split] = {
            "images": 0,
            "boxes": 0,
            "per_class": dict.fromkeys(DET_CATEGORY_OF_TRAIN_ID.values(), 0),
            "sizes": {"small": 0, "medium": 0, "large": 0},
            "occluded": 0,
            "truncated": 0,
            "images_without_boxes": 0,
            "tiny_instances_skipped": 0,
        }

    def add(self, split: str, labels: list[dict], tiny: int) -> None:
        s = self.split[split]
        s["images"] += 1
        s["boxes"] += len(labels)
        s["images_without_boxes"] += not labels
        s["tiny_instances_skipped"] += tiny
        for label in labels:
            b = label["box2d"]
            area = (b["x2"] - b["x1"] + 1) * (b["y2"] - b["y1"] + 1)  # COCO area of the converted box
            size = "small" if area < DET_SIZE_EDGES[0] else "medium" if area <= DET_SIZE_EDGES[1] else "large"
            s["sizes"][size] += 1
            s["per_class"][label["category"]] += 1
            s["occluded"] += label["attributes"]["occluded"]
            s["truncated"] += label["attributes"]["truncated"]

    def markdown(self) -> str:
        splits = [k for k in ("train", "val") if k in self.split]
        head = "| Class | " + " | ".join(f"{k} boxes" for k in splits) + " |"
        rows = [head, "|---|" + "---|" * len(splits)]
        for c in self.split[splits[0]]["per_class"]:
            rows.append(f"| {c} | " + " | ".join(str(self.split[k]["per_class"][c]) for k in splits) + " |")
        lines = []
        for k in splits:
            s = self.split[k]
            n = max(s["boxes"], 1)
            z = s["sizes"]
            lines.append(
                f"- {k}: {s['boxes']} boxes in {s['images']} images ({s['images_without_boxes']} without any); "
                f"small / medium / large (COCO areas < 32², ≤ 96², > 96²): {z['small']} / {z['medium']} / "
                f"{z['large']} ({100 * z['small'] / n:.0f} % small); {s['occluded']} occluded, {s['truncated']} "
                f"truncated; {s['tiny_instances_skipped']} instances under {MIN_BOX_PIXELS} visible pixels skipped"
            )
        return "\n".join(rows) + "\n\n" + "\n".join(lines)


def _write_flow(root: Path, split: str, video: str, t: int, t2: int, flow: np.ndarray, occ: np.ndarray) -> dict:
    stem = f"flow/{split}/{video}_{t}_{t2}"
    write_flo(root / f"{stem}.flo", flow)
    Image.fromarray(occ.astype(np.uint8) * 255).save(root / f"{stem}_occ.png")
    return {"video": video, "t": t, "t2": t2, "flow": f"{stem}.flo", "occlusion": f"{stem}_occ.png"}


# What `generate_dataset` writes at the top level: an unmarked folder of exactly these (an older poodle's) may be
# replaced by --overwrite; anything else is refused.
_LAYOUT = ("meta.json", "stats.md", "preview.png", "videos", "images", "labels", "flow", MARKER)


def _prepare_output(out: Path, overwrite: bool) -> None:
    try:  # never delete a folder poodle did not write as a SynthDrive dataset (its marker file)
        check_replaceable(out, "synthdrive", overwrite, legacy=("meta.json", _LAYOUT))
    except OutputDirError as e:
        raise SynthDriveError(str(e)) from None


def resolve_preset(preset: str | Preset, resolution=None, **overrides) -> Preset:
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise SynthDriveError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    changes = {k: v for k, v in overrides.items() if v is not None}
    if resolution is not None:
        changes["resolution"] = check_resolution(resolution)
    preset = replace(preset, **changes)
    check_resolution(preset.resolution)
    error = preset.counts_error()
    if error:
        raise SynthDriveError(error)
    return preset


def generate_dataset(
    out: str | Path,
    preset: str | Preset = "small",
    seed: int = 0,
    resolution: tuple[int, int] | None = None,
    overwrite: bool = False,
    preview: bool = False,
    progress: bool = True,
    *,
    train_videos: int | None = None,
    val_videos: int | None = None,
    train_images: int | None = None,
    val_images: int | None = None,
    seconds: float | None = None,
    fps: int | None = None,
    flow_pairs: int | None = None,
) -> dict:
    """Generate a SynthDrive dataset at `out` and return its meta (also saved as meta.json)."""
    p = resolve_preset(
        preset,
        resolution,
        train_videos=train_videos,
        val_videos=val_videos,
        train_images=train_images,
        val_images=val_images,
        seconds=seconds,
        fps=fps,
        flow_pairs=flow_pairs,
    )
    out = Path(out)
    _prepare_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.partial-", dir=out.parent))
    try:
        meta = _generate_into(tmp, p, int(seed), preset if isinstance(preset, str) else "custom", preview, progress)
        write_marker(tmp, "synthdrive")
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{out.name}.old-", dir=out.parent))
            out.rename(old / "dataset")
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _generate_into(root: Path, p: Preset, seed: int, preset_name: str, preview: bool, progress: bool) -> dict:
    for split in SPLITS:
        for sub in ("videos", "images/10k", "labels/sem_seg/masks", "labels/sem_seg/colormaps", "flow", "images/100k"):
            (root / sub / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / "det_20").mkdir(parents=True, exist_ok=True)
    n_frames = p.frames_per_video
    render_seconds = 0.0
    rendered = 0
    flow_index: dict[str, list[dict]] = {}
    previews: list[tuple] = []
    bar_opts = {"enabled": progress, "leave": False}

    n_videos = p.train_videos + p.val_videos
    with progress_bar(total=n_videos * n_frames, desc="synthdrive videos", unit="frame", **bar_opts) as bar:
        for split, count in (("train", p.train_videos), ("val", p.val_videos)):
            flow_index[split] = []
            for i in range(count):
                index = INDEX_BASE[("video", split)] + i
                name = sequence_name(seed, "video", split, i)
                seq = SynthDriveSequence(seed=seed, index=index, resolution=p.resolution, fps=p.fps)
                frames = []
                for t in range(n_frames):
                    start = time.perf_counter()
                    frames.append(seq.frame(t))
                    render_seconds += time.perf_counter() - start
                    rendered += 1
                    bar.update(1)
                _write_video(root / "videos" / split / f"{name}.mov", frames, p.fps, p.resolution)
                rng = np.random.default_rng([seed, index, 7])
                for _ in range(p.flow_pairs):
                    dt = int(rng.integers(p.flow_dt[0], min(p.flow_dt[1], n_frames - 1) + 1))
                    t = int(rng.integers(0, n_frames - dt))
                    flow, occ = seq.flow(t, t + dt), seq.occlusion(t, t + dt)
                    flow_index[split].append(_write_flow(root, split, name, t, t + dt, flow, occ))
                    if preview and split == "train" and len(previews) < 4:
                        previews.append((frames[t], frames[t + dt], seq.labels(t), flow, occ, dt))
            (root / "flow" / f"{split}.json").write_text(json.dumps(flow_index[split], indent=1))

    train_labels = []
    det_stats, det_files, det_seconds = _DetStats(), set(), 0.0
    n_images = p.train_images + p.val_images
    with progress_bar(total=n_images, desc="synthdrive images", unit="img", **bar_opts) as bar:
        for split, count in (("train", p.train_images), ("val", p.val_images)):
            det_frames = []
            det_stats.begin(split)
            for i in range(count):
                index, t = labelled_image_source(seed, split, i, n_frames)
                seq = SynthDriveSequence(seed=seed, index=index, resolution=p.resolution, fps=p.fps)
                start = time.perf_counter()
                frame, labels = seq.frame(t), seq.labels(t)
                render_seconds += time.perf_counter() - start
                rendered += 1
                name = sequence_name(seed, "image", split, i)
                _write_image(root, split, name, frame, labels)
                if split == "train":
                    train_labels.append(labels)
                # Detection: boxes of the visible pixels of each instance, from the exact object ids.
                start = time.perf_counter()
                det_files.add(_link_det_image(root, split, name))
                boxes, tiny = detection_labels(seq, t, instance_table(seq.scene))
                det_seconds += time.perf_counter() - start
                det_stats.add(split, boxes, tiny)
                det_frames.append(
                    {
                        "name": f"{name}.jpg",
                        "attributes": {"weather": "undefined", "scene": "undefined", "timeofday": "undefined"},
                        "timestamp": round(1000 * t / p.fps),
                        "labels": boxes,
                    }
                )
                bar.update(1)
            (root / "labels" / "det_20" / f"det_{split}.json").write_text(json.dumps(det_frames))

    stats = class_statistics(train_labels, BDD100K_CLASSES)
    table = stats.to_markdown()
    (root / "stats.md").write_text(
        f"# SynthDrive class statistics (train labels, preset {preset_name}, seed {seed})\n\n{table}\n\n"
        f"{stats.summary()}\n\n"
        f"## Detection boxes (labels/det_20, both splits)\n\n{det_stats.markdown()}\n"
    )
    if preview and previews:
        write_preview(root / "preview.png", previews, p.fps)
    meta = {
        "generator": "synthdrive",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "preset": preset_name,
        "resolution": list(p.resolution),
        "fps": p.fps,
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(p).items()},
        "counts": {
            "videos": {"train": p.train_videos, "val": p.val_videos},
            "frames_per_video": n_frames,
            "images": {"train": p.train_images, "val": p.val_images},
            "flow_pairs": {s: len(v) for s, v in flow_index.items()},
        },
        "flow_dt_frames": list(p.flow_dt),
        "class_stats": stats.to_dict(),
        "frames_per_second": round(rendered / max(render_seconds, 1e-9), 1),
        "classes": list(BDD100K_CLASSES),
        "ignore_index": 255,
        "detection": {
            "labels": "labels/det_20/det_{split}.json",
            "images": "images/100k/{split}",
            "image_files": " / ".join(sorted(det_files)) or "none",
            "classes": list(dict.fromkeys(DET_CATEGORY_OF_TRAIN_ID.values())),
            "box_convention": "scalabel (inclusive pixel boxes: width = x2 - x1 + 1)",
            "min_box_pixels": MIN_BOX_PIXELS,
            "occlusion_margin_m": OCCLUSION_MARGIN_M,
            "size_areas": list(DET_SIZE_EDGES),
            "splits": det_stats.split,
            "seconds": round(det_seconds, 2),
        },
    }
    (root / "meta.json").write_text(json.dumps(meta, indent=1))  # last: its presence marks a complete dataset
    return meta
