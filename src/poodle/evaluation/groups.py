"""Size (Small/Large) and frequency (Rare/Common) class groups, and metrics per group (the paper's Tables 3, 6 and 10).

- Large if the class's mean pixel share over the images that contain it is > 1 %, else Small (Table 10's
  "Avg Pix. % / Im.": see `poodle.data.class_stats`).
- Common if the class is present in > 20 % of the (train) images, else Rare.
- Both on the unrounded statistics (rounding only in reports).
- BDD100K uses the fixed assignment of the paper's Table 10 (`BDD100K_GROUPS`); other datasets compute the groups
  from their train split with `ClassGroups.from_stats(class_statistics(...))` (`poodle stats` prints them).

Group mIoU is the unweighted nanmean of the per-class IoUs of the group's classes (checked against the paper's
Tables 3 and 9). Group pixel accuracy (Table 6) is the accuracy over the pixels whose ground-truth class is in the
group: sum of TP over the group's classes / sum of their ground-truth pixels. "All" is the plain mIoU / aAcc.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from poodle.data.class_stats import (
    COMMON_THRESHOLD_PCT,
    LARGE_THRESHOLD_PCT,
    ClassStats,
    class_statistics,
    class_statistics_from_histograms,
)
from poodle.data.classes import BDD100K_CLASSES
from poodle.data.segmentation import LabelDecoder, SegmentationDataset, decode_histograms, read_mask, scan_masks
from poodle.evaluation.metrics import SegMetrics

GROUP_NAMES: tuple[str, ...] = ("All", "Small", "Large", "Rare", "Common")


@dataclass(frozen=True)
class ClassGroups:
    """Class indices (into the dataset's class list) of each group; Small/Large and Rare/Common partition them."""

    small: tuple[int, ...]
    large: tuple[int, ...]
    rare: tuple[int, ...]
    common: tuple[int, ...]

    @classmethod
    def from_stats(cls, stats: ClassStats, class_names: Sequence[str] | None = None) -> ClassGroups:
        """Groups from the statistics' numbers (thresholds re-applied, strict `>` as in the paper).

        Rows are matched to `class_names` by name when given, otherwise taken in row order (class index order, as
        `class_statistics` produces them).
        """
        if class_names is None:
            index = {r.name: i for i, r in enumerate(stats.rows)}
        else:
            index = {n: i for i, n in enumerate(class_names)}
            missing = [r.name for r in stats.rows if r.name not in index]
            if missing:
                raise ValueError(f"classes in the statistics but not in class_names: {missing}")
        small, large, rare, common = [], [], [], []
        for r in stats.rows:
            i = index[r.name]
            (large if r.avg_pixel_pct > LARGE_THRESHOLD_PCT else small).append(i)
            (common if r.image_pct > COMMON_THRESHOLD_PCT else rare).append(i)
        return cls(*(tuple(sorted(g)) for g in (small, large, rare, common)))

    @classmethod
    def from_names(cls, class_names: Sequence[str], small: Sequence[str], rare: Sequence[str]) -> ClassGroups:
        """Groups from the names of the Small and Rare classes; every other class is Large / Common."""
        index = {n: i for i, n in enumerate(class_names)}
        unknown = [n for n in (*small, *rare) if n not in index]
        if unknown:
            raise ValueError(f"unknown class names: {unknown}")
        s = {index[n] for n in small}
        r = {index[n] for n in rare}
        every = range(len(class_names))
        return cls(
            small=tuple(sorted(s)),
            large=tuple(i for i in every if i not in s),
            rare=tuple(sorted(r)),
            common=tuple(i for i in every if i not in r),
        )

    def members(self) -> dict[str, tuple[int, ...]]:
        """Group name ("Small", ...) -> class indices; "All" is the union."""
        return {
            "All": tuple(sorted(set(self.small) | set(self.large))),
            "Small": self.small,
            "Large": self.large,
            "Rare": self.rare,
            "Common": self.common,
        }

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict[str, list]:
        """{"small": [...], ...} with class names when given (readable results.json), else indices."""
        out = {}
        for key in ("small", "large", "rare", "common"):
            idx = getattr(self, key)
            out[key] = [class_names[i] for i in idx] if class_names is not None else list(idx)
        return out

    @classmethod
    def from_dict(cls, d: dict, class_names: Sequence[str] | None = None) -> ClassGroups:
        def conv(v: list) -> tuple[int, ...]:
            if v and isinstance(v[0], str):
                if class_names is None:
                    raise ValueError("group members are names: pass class_names")
                index = {n: i for i, n in enumerate(class_names)}
                return tuple(sorted(index[n] for n in v))
            return tuple(sorted(int(x) for x in v))

        return cls(*(conv(d[k]) for k in ("small", "large", "rare", "common")))


# The paper's Table 10 (App. H): the fixed assignment used for BDD100K evaluation.
BDD100K_SMALL = ("pole", "bicycle", "person", "motorcycle", "traffic sign", "rider", "traffic light")
BDD100K_RARE = ("bus", "wall", "train", "bicycle", "motorcycle", "rider")
BDD100K_GROUPS = ClassGroups.from_names(BDD100K_CLASSES, small=BDD100K_SMALL, rare=BDD100K_RARE)


def groups_for_dataset(dataset: str, class_names: Sequence[str], stats: ClassStats | None = None) -> ClassGroups:
    """BDD100K uses the paper's Table 10; any other dataset needs statistics of its train split."""
    if dataset.lower() in ("bdd100k", "bdd") and tuple(class_names) == BDD100K_CLASSES:
        return BDD100K_GROUPS
    if stats is None:
        raise ValueError(f"class groups of {dataset!r} need its train-split statistics (see `poodle stats`)")
    return ClassGroups.from_stats(stats, class_names)


def _nanmean(values: list[float]) -> float:
    valid = [v for v in values if not math.isnan(v)]
    return sum(valid) / len(valid) if valid else float("nan")


def group_metrics(metrics: SegMetrics, groups: ClassGroups) -> dict[str, dict[str, float]]:
    """{"mIoU": {"All", "Small", "Large", "Rare", "Common"}, "Acc": {...}} as fractions (NaN if undefined).

    mIoU of a group: unweighted nanmean of its classes' IoUs. Acc of a group: sum TP / sum GT pixels over its
    classes (pixel accuracy restricted to pixels labelled with a class of the group), NaN without per-class counts.
    "All" equals miou / aacc.
    """
    n = metrics.num_classes
    for name, idx in groups.members().items():
        if any(i < 0 or i >= n for i in idx):
            raise ValueError(f"group {name} has class indices outside the {n} classes of the metrics")
    # Pixel accuracy needs the per-class counts; metrics rebuilt from IoUs alone (e.g. a paper table) have none.
    counts = len(metrics.per_class_tp) == n and len(metrics.per_class_gt) == n
    miou, acc = {}, {}
    for name, idx in groups.members().items():
        if name == "All":
            miou[name], acc[name] = metrics.miou, metrics.aacc
            continue
        miou[name] = _nanmean([metrics.per_class_iou[i] for i in idx])
        gt = sum(metrics.per_class_gt[i] for i in idx) if counts else 0
        acc[name] = sum(metrics.per_class_tp[i] for i in idx) / gt if gt > 0 else float("nan")
    return {"mIoU": miou, "Acc": acc}


def read_label_file(path: str | Path) -> np.ndarray:
    """A label PNG as its stored integer values (palette PNGs give indices, not colours); no image decode. A colour
    (RGB) or truncated file is a one-line `SegDatasetError` naming it (an RGB mask used to be counted per channel)."""
    return read_mask(path)


def mask_files_statistics(
    paths: Sequence[str | Path], class_names: Sequence[str], ignore_index: int = 255, reduce_zero_label: bool = False
) -> ClassStats:
    """`class_statistics` over label files holding class ids directly (train ids); `reduce_zero_label` maps the
    ADE20K encoding (0 = unlabelled, 1..n = classes, 255 = ignore) to 255 / 0..n-1 / 255 first. A value that is
    neither a class id nor the ignore index is an error naming the file."""
    return class_statistics(_direct_maps(paths, len(class_names), ignore_index, reduce_zero_label), class_names,
                            ignore_index)  # fmt: skip


def label_maps(
    dataset: Any, limit: int | None = None, progress: Callable[[int, int], None] | None = None
) -> Iterator[np.ndarray]:
    """The decoded label maps of the first `limit` samples of a segmentation dataset (all by default).

    Reads only the label files when the dataset exposes `.mask_paths` (no image decode, ~10x faster): through the
    dataset's own per-sample `.decoders` when it has them (exactly what the loader yields), else directly when the
    first file equals the loader's first mask; otherwise iterates the dataset's items. `progress(done, total)` is
    called after each map.
    """
    info = dataset.info
    ignore = int(getattr(info, "ignore_index", 255))
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n == 0:
        raise ValueError("the dataset is empty")
    paths = list(getattr(dataset, "mask_paths", None) or [])[:n]
    decoders = list(getattr(dataset, "decoders", None) or [])[:n]
    maps: Iterable[np.ndarray] | None = None
    if len(paths) == n and len(decoders) == n:
        maps = (decoders[i](read_label_file(paths[i]), paths[i]) for i in range(n))
    elif len(paths) == n:
        reduce = bool(getattr(info, "reduce_zero_label", False))
        classes = len(info.classes)
        try:
            first = next(iter(_direct_maps(paths[:1], classes, ignore, reduce)))
            ok = np.array_equal(first, np.asarray(dataset[0]["mask"]))
        except (OSError, ValueError):
            ok = False
        if ok:
            maps = _direct_maps(paths, classes, ignore, reduce)
    if maps is None:
        maps = (np.asarray(dataset[i]["mask"]) for i in range(n))
    for i, m in enumerate(maps):
        yield np.asarray(m)
        if progress is not None:
            progress(i + 1, n)


def dataset_statistics(
    dataset: Any, limit: int | None = None, progress: Callable[[int, int], None] | None = None, workers: int = 0
) -> ClassStats:
    """Class statistics of a segmentation dataset (`build_segmentation_dataset` API: `.info.classes`,
    `.info.ignore_index`, items with "mask"), over its first `limit` samples (all by default).

    A `SegmentationDataset` goes through the readout's mask check (`scan_masks`: label files only, every mask
    checked for decoding, its image's size and its values, one-line errors naming the file); anything else
    through `label_maps`."""
    if len(dataset) == 0 or limit == 0:
        raise ValueError("the dataset is empty")
    info = dataset.info
    classes, ignore = tuple(info.classes), int(getattr(info, "ignore_index", 255))
    if isinstance(dataset, SegmentationDataset):
        scan = scan_masks(dataset, limit, workers, progress or False)
        return class_statistics_from_histograms(decode_histograms(dataset, scan), scan.sizes, classes, ignore)
    return class_statistics(label_maps(dataset, limit, progress), classes, ignore)


def _direct_maps(
    paths: Sequence[str | Path], num_classes: int, ignore_index: int, reduce_zero_label: bool
) -> Iterator[np.ndarray]:
    # The datasets' own decoders: 255 stays ignore under reduce_zero_label (a plain "- 1" made it 254, a class id
    # of nothing), and out-of-range values are refused by name rather than silently not counted.
    decoder = (LabelDecoder.reduce_zero_label if reduce_zero_label else LabelDecoder.identity)(
        num_classes, ignore_index
    )
    for p in paths:
        yield decoder(read_label_file(p), p)
