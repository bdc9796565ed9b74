"""BDD100K detection labels ("det_20") for the detection readout: validation, a torch Dataset and COCO ground truth.

Layout (BDD100K; SynthDrive writes the same):

    ROOT/labels/det_20/det_{split}.json      list of frames: name, attributes, timestamp, labels[]
    ROOT/images/100k/{split}/<name>          the frame named by `name` (e.g. "0000f77c-6257be58.jpg")

A label is {"id", "category", "attributes": {"occluded", "truncated", ["crowd"]}, "box2d": {x1, y1, x2, y2}} with
Scalabel's inclusive pixel boxes: (0, 0) is the top-left corner of the top-left pixel and x2, y2 are the last
column / row covered, so width = x2 - x1 + 1 (bdd100k doc/source/format.rst). Conversions follow the official
toolkit: `bdd100k.label.to_coco -m det` maps names with bdd100k/configs/det.toml (`bdd100k_to_scalabel`), then calls
scalabel's `scalabel2coco_detection`, whose `box2d_to_bbox` gives COCO [x1, y1, x2 - x1 + 1, y2 - y1 + 1] with
area = w * h and iscrowd = crowd or ignored (scalabel/label/transforms.py, to_coco.py). The same rule in xyxy form is
scalabel's `box2d_to_xyxy`: [x1, y1, x2 + 1, y2 + 1], which is what `DetectionDataset` returns.

    check_detection_data(root, "val")                  # counts, or a one-line DetectionDataError
    ds = DetectionDataset(root, "val", max_images=500)
    ds[0]  # {"image", "boxes", "labels", "iscrowd", "ignore", "name", "image_id"}
    ds.coco_ground_truth()                             # COCO dict for pycocotools
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

DET_CLASSES: tuple[str, ...] = (
    "pedestrian",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
    "traffic light",
    "traffic sign",
)
CATEGORY_ID = {name: i + 1 for i, name in enumerate(DET_CLASSES)}  # 0 = background in torchvision detectors
# det.toml's parent categories (the COCO "supercategory").
SUPERCATEGORY = {
    "pedestrian": "human",
    "rider": "human",
    "car": "vehicle",
    "truck": "vehicle",
    "bus": "vehicle",
    "train": "vehicle",
    "motorcycle": "bike",
    "bicycle": "bike",
    "traffic light": "traffic light",
    "traffic sign": "traffic sign",
}
# bdd100k/configs/det.toml: [name_mapping] and [ignore_mapping] (remove_ignore = false, ignore_as_class = false).
NAME_MAPPING = {"bike": "bicycle", "caravan": "car", "motor": "motorcycle", "person": "pedestrian", "van": "car"}
IGNORE_MAPPING = {"other person": "pedestrian", "other vehicle": "car", "trailer": "truck"}
# Lane-marking and drivable-area categories (2018 labels, lane_mark.toml, drivable.toml): not boxes, skipped.
_SKIPPED = {
    "lane",
    "drivable area",
    "direct",
    "alternative",
    "background",
    "crosswalk",
    "double other",
    "double white",
    "double yellow",
    "road curb",
    "single other",
    "single white",
    "single yellow",
}
SIZE_AREAS = (32**2, 96**2)  # COCO small / medium / large boundaries (pycocotools areaRng)


class DetectionDataError(ValueError):
    """A det_20 file or its images do not match the BDD100K layout; the message is one line naming the file."""


def det_label_path(root: str | Path, split: str) -> Path:
    return Path(root) / "labels" / "det_20" / f"det_{split}.json"


def det_image_dir(root: str | Path, split: str) -> Path:
    return Path(root) / "images" / "100k" / split


@dataclass
class _Parsed:
    """Every frame of a det file, its boxes concatenated (Scalabel inclusive coordinates)."""

    path: Path
    names: list[str]
    offsets: np.ndarray  # (n + 1,) int64: frame i's boxes are [offsets[i], offsets[i + 1])
    boxes: np.ndarray  # (m, 4) float64 x1, y1, x2, y2, inclusive
    labels: np.ndarray  # (m,) int64 in 1..10
    crowd: np.ndarray  # (m,) bool
    ignored: np.ndarray  # (m,) bool: an ignored category (det.toml ignore_mapping) or attributes.ignored
    skipped: int = 0  # lane / drivable-area labels
    no_box: int = 0  # detection labels without box2d (the toolkit skips them too)


def _check_layout(root: Path, split: str) -> Path:
    if not isinstance(split, str) or not split or "/" in split or "\\" in split:
        raise DetectionDataError(f"detection split must be a name such as 'train' or 'val', got {split!r}")
    if not root.is_dir():
        raise DetectionDataError(f"detection data root {root} is not a directory; pass the folder holding labels/")
    path = det_label_path(root, split)
    if path.is_file():
        return path
    det_dir = path.parent
    hint = f"expected the BDD100K 'Detection 2020 Labels' at {path}"
    if det_dir.is_dir():
        found = sorted(p.name for p in det_dir.glob("det_*.json"))
        splits = [n[len("det_") : -len(".json")] for n in found]
        hint += f"; {det_dir} has splits {', '.join(splits) or 'none'}" + (
            " (BDD100K publishes no test labels)" if split == "test" else ""
        )
    elif (root / "bdd100k" / "labels").is_dir():
        hint += f"; {root / 'bdd100k'} looks like the dataset root: pass that folder"
    elif list((root / "labels").glob(f"bdd100k_labels_images_{split}.json")):
        hint += "; labels/bdd100k_labels_images_*.json are the deprecated 2018 labels: download det_20"
    elif (root / "meta.json").is_file() and (root / "labels" / "sem_seg").is_dir():
        hint += "; this SynthDrive dataset predates detection labels: regenerate it with `poodle synth --overwrite`"
    elif (root / "labels" / "sem_seg").is_dir():
        hint += "; only segmentation labels (labels/sem_seg) are here"
    raise DetectionDataError(hint)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _parse(path: Path) -> _Parsed:
    try:
        with open(path, encoding="utf-8") as f:
            frames = json.load(f)
    except json.JSONDecodeError as e:
        raise DetectionDataError(f"{path}: not valid JSON ({e}); re-download or regenerate the file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DetectionDataError(f"{path}: cannot read it ({e})") from None
    if isinstance(frames, dict) and isinstance(frames.get("frames"), list):
        frames = frames["frames"]  # Scalabel's {"frames": [...], "config": ...} wrapper
    if not isinstance(frames, list):
        raise DetectionDataError(
            f"{path}: expected a JSON list of frames (BDD100K det_20), got a {type(frames).__name__}"
        )
    names: list[str] = []
    seen: dict[str, int] = {}
    offsets = [0]
    boxes: list[tuple[float, float, float, float]] = []
    labels: list[int] = []
    crowd: list[bool] = []
    ignored: list[bool] = []
    skipped = no_box = 0
    for i, frame in enumerate(frames):
        where = f"{path}: frame {i}"
        if not isinstance(frame, dict):
            raise DetectionDataError(f"{where}: expected an object, got {type(frame).__name__}")
        name = frame.get("name")
        if not isinstance(name, str) or not name.strip():
            raise DetectionDataError(f"{where}: no 'name' (the image file name); fix or remove this frame")
        where = f"{path}: frame {i} ({name!r})"
        if name in seen:
            raise DetectionDataError(f"{where}: the same name as frame {seen[name]}; merge or remove the duplicate")
        seen[name] = i
        frame_labels = frame.get("labels")
        if frame_labels is None:
            frame_labels = []
        if not isinstance(frame_labels, list):
            raise DetectionDataError(f"{where}: 'labels' must be a list, got {type(frame_labels).__name__}")
        for j, label in enumerate(frame_labels):
            at = f"{where}, label {j}"
            if not isinstance(label, dict):
                raise DetectionDataError(f"{at}: expected an object, got {type(label).__name__}")
            category = label.get("category")
            if not isinstance(category, str):
                raise DetectionDataError(f"{at}: no 'category'; fix or remove this label")
            if category in _SKIPPED or category.startswith(("lane/", "area/")):
                skipped += 1
                continue
            category = NAME_MAPPING.get(category, category)
            is_ignored = category in IGNORE_MAPPING
            category = IGNORE_MAPPING.get(category, category)
            if category not in CATEGORY_ID:
                known = sorted(set(DET_CLASSES) | set(NAME_MAPPING) | set(IGNORE_MAPPING))
                raise DetectionDataError(
                    f"{at}: unknown category {label['category']!r}; det_20 categories are {', '.join(known)}"
                )
            attributes = label.get("attributes") or {}
            if not isinstance(attributes, dict):
                raise DetectionDataError(f"{at}: 'attributes' must be an object, got {type(attributes).__name__}")
            box = label.get("box2d")
            if box is None:
                no_box += 1
                continue
            if not isinstance(box, dict):
                raise DetectionDataError(f"{at}: 'box2d' must be an object with x1, y1, x2, y2")
            values = [box.get(k) for k in ("x1", "y1", "x2", "y2")]
            if not all(_number(v) for v in values):
                raise DetectionDataError(f"{at}: box2d needs finite numbers x1, y1, x2, y2, got {box!r}")
            x1, y1, x2, y2 = (float(v) for v in values)
            if x2 < x1 or y2 < y1:
                raise DetectionDataError(
                    f"{at}: box2d has x2 < x1 or y2 < y1 ({box!r}); Scalabel boxes are [x1, x2] x [y1, y2] with "
                    "x2 >= x1 (inclusive pixels); fix or remove this label"
                )
            boxes.append((x1, y1, x2, y2))
            labels.append(CATEGORY_ID[category])
            crowd.append(bool(attributes.get("crowd", False)))
            ignored.append(is_ignored or bool(attributes.get("ignored", False)))
        names.append(name)
        offsets.append(len(boxes))
    return _Parsed(
        path=path,
        names=names,
        offsets=np.asarray(offsets, dtype=np.int64),
        boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
        crowd=np.asarray(crowd, dtype=bool),
        ignored=np.asarray(ignored, dtype=bool),
        skipped=skipped,
        no_box=no_box,
    )


def _missing_images(image_dir: Path, names: list[str]) -> list[str]:
    return [n for n in names if not (image_dir / n).is_file()]


def _raise_missing(parsed: _Parsed, image_dir: Path, missing: list[str], total: int) -> None:
    if not image_dir.is_dir():
        raise DetectionDataError(
            f"{parsed.path}: its images belong in {image_dir}, which does not exist "
            "(BDD100K's 100K images; images/10k is the segmentation subset)"
        )
    first = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
    raise DetectionDataError(
        f"{parsed.path}: {len(missing)} of {total} images are missing from {image_dir} (first: {first}); "
        "restore them or remove their frames"
    )


def _area_sizes(boxes: np.ndarray) -> dict[str, int]:
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    small = int((area < SIZE_AREAS[0]).sum())
    large = int((area > SIZE_AREAS[1]).sum())
    return {"small": small, "medium": len(area) - small - large, "large": large}


def learnable_boxes_per_image(offsets: np.ndarray, crowd: np.ndarray, ignored: np.ndarray) -> np.ndarray:
    """Boxes per image that are neither crowd nor ignored (the ones a detector learns from and is scored on)."""
    cumulative = np.concatenate([[0], np.cumsum(~(crowd | ignored))])
    return cumulative[offsets[1:]] - cumulative[offsets[:-1]]


def check_detection_data(root: str | Path, split: str, *, require_images: bool = True) -> dict:
    """Validate ROOT/labels/det_20/det_{split}.json and its images before any training; return counts.

    Every frame and label is parsed; broken JSON, a frame without `name`, a box that is not four finite numbers
    or has x2 < x1 / y2 < y1, an unknown category, a duplicated name and (unless `require_images=False`) a
    missing image raise `DetectionDataError`. Counts: `boxes` per class are the training targets (not ignored, not
    crowd); `ignored_boxes` are det.toml's ignored categories, `crowd_boxes` those with attributes.crowd (the two
    may overlap; both are kept as ignore regions for evaluation); `images_without_boxes` have no training target;
    `sizes` is the COCO small / medium / large mix of the targets' converted areas.
    """
    root = Path(root)
    path = _check_layout(root, split)
    parsed = _parse(path)
    image_dir = det_image_dir(root, split)
    missing = _missing_images(image_dir, parsed.names)
    if missing and require_images:
        _raise_missing(parsed, image_dir, missing, len(parsed.names))
    target = ~parsed.ignored & ~parsed.crowd
    per_image = learnable_boxes_per_image(parsed.offsets, parsed.crowd, parsed.ignored)
    return {
        "labels": str(path),
        "images_dir": str(image_dir),
        "images": len(parsed.names),
        "boxes": {c: int((parsed.labels[target] == i + 1).sum()) for i, c in enumerate(DET_CLASSES)},
        "target_boxes": int(target.sum()),
        "ignored_boxes": int(parsed.ignored.sum()),
        "crowd_boxes": int(parsed.crowd.sum()),
        "images_without_boxes": int((per_image == 0).sum()),
        "missing_images": len(missing),
        "skipped_labels": parsed.skipped,
        "labels_without_box2d": parsed.no_box,
        "sizes": _area_sizes(parsed.boxes[target]),
    }


class DetectionDataset(Dataset):
    """BDD100K det_20 frames as torchvision detection samples (see the module docstring for the box rule).

    Item i: {"image": uint8 (3, H, W) RGB, "boxes": float32 (N, 4) xyxy with x2, y2 exclusive, "labels": int64 (N,)
    in 1..10, "iscrowd": bool (N,), "ignore": bool (N,) (ignored categories and crowd boxes: evaluation-only ignore
    regions), "name": str, "image_id": int (1-based position in the JSON file, as the toolkit's to_coco)}.
    """

    classes = DET_CLASSES

    def __init__(self, root: str | Path, split: str, max_images: int | None = None):
        if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int)):
            raise DetectionDataError(f"max_images must be a non-negative integer or None, got {max_images!r}")
        if max_images is not None and max_images < 0:
            raise DetectionDataError(f"max_images must be a non-negative integer or None, got {max_images}")
        self.root, self.split = Path(root), split
        parsed = _parse(_check_layout(self.root, split))
        n = len(parsed.names) if max_images is None else min(max_images, len(parsed.names))
        self.label_path = parsed.path
        self.image_dir = det_image_dir(self.root, split)
        missing = _missing_images(self.image_dir, parsed.names[:n])
        if missing:
            _raise_missing(parsed, self.image_dir, missing, n)
        end = int(parsed.offsets[n])
        self.names = parsed.names[:n]
        self._offsets = parsed.offsets[: n + 1]
        self._boxes = parsed.boxes[:end]
        self._labels = parsed.labels[:end]
        self._crowd = parsed.crowd[:end]
        self._ignored = parsed.ignored[:end]

    def __len__(self) -> int:
        return len(self.names)

    def _slice(self, i: int) -> slice:
        return slice(int(self._offsets[i]), int(self._offsets[i + 1]))

    def _read_image(self, i: int) -> np.ndarray:
        path = self.image_dir / self.names[i]
        try:
            with Image.open(path) as img:
                return np.asarray(img.convert("RGB"))
        except (OSError, ValueError) as e:
            raise DetectionDataError(f"{path}: cannot read image of frame {i} ({e})") from None

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        i %= len(self)
        s = self._slice(i)
        xyxy = self._boxes[s].copy()
        xyxy[:, 2:] += 1.0  # inclusive Scalabel pixels -> exclusive (scalabel box2d_to_xyxy)
        crowd = self._crowd[s]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(self._read_image(i).transpose(2, 0, 1))),
            "boxes": torch.from_numpy(xyxy.astype(np.float32)),
            "labels": torch.from_numpy(self._labels[s].copy()),
            "iscrowd": torch.from_numpy(crowd.copy()),
            "ignore": torch.from_numpy(self._ignored[s] | crowd),
            "name": self.names[i],
            "image_id": i + 1,
        }

    def learnable_images(self) -> list[int]:
        """Indices of the images with at least one box that is neither crowd nor ignored (MMDetection's
        `filter_empty_gt`), from the parsed labels alone: no image is opened, so 70K BDD100K frames take
        milliseconds."""
        per_image = learnable_boxes_per_image(self._offsets, self._crowd, self._ignored)
        return np.flatnonzero(per_image > 0).tolist()

    def image_size(self, i: int) -> tuple[int, int]:
        """(height, width) of image i, read from its header."""
        path = self.image_dir / self.names[i]
        try:
            with Image.open(path) as img:
                w, h = img.size
        except (OSError, ValueError) as e:
            raise DetectionDataError(f"{path}: cannot read image of frame {i} ({e})") from None
        return h, w

    def coco_ground_truth(self) -> dict:
        """COCO detection ground truth (pycocotools `COCO()`), as the toolkit's to_coco would write it.

        bbox = [x1, y1, x2 - x1 + 1, y2 - y1 + 1], area = w * h; iscrowd = 1 for crowd and ignored boxes (COCOeval
        then treats them as ignore regions) and ignore = 1 for ignored categories.
        """
        images, annotations = [], []
        for i, name in enumerate(self.names):
            h, w = self.image_size(i)
            images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
            s = self._slice(i)
            for (x1, y1, x2, y2), label, crowd, ignored in zip(
                self._boxes[s].tolist(), self._labels[s].tolist(), self._crowd[s].tolist(), self._ignored[s].tolist()
            ):
                bw, bh = x2 - x1 + 1, y2 - y1 + 1
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i + 1,
                        "category_id": label,
                        "bbox": [x1, y1, bw, bh],
                        "area": float(bw * bh),
                        "iscrowd": int(crowd or ignored),
                        "ignore": int(ignored),
                    }
                )
        categories = [{"id": i + 1, "name": c, "supercategory": SUPERCATEGORY[c]} for i, c in enumerate(DET_CLASSES)]
        return {
            "info": {"description": f"BDD100K det_20 ground truth from {self.label_path}"},
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
