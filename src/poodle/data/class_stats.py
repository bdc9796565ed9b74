"""Per-class label statistics and the size / frequency groups of the paper (App. H, Table 10).

Reused for any semantic-segmentation label set (BDD100K, Cityscapes, SynthDrive): pass label maps and names, or
per-image label histograms (`class_statistics_from_histograms`, what the mask scan of the readout produces).

"Avg Pix. % / Im." is the class's mean share of an image over the images that CONTAIN the class. Table 10 can only
be read this way: every BDD100K image is 720x1280, so a mean over all images would equal its "Total % of Pix."
column, yet the two differ (bus 3.7 vs 0.6; 0.6 % of all pixels / present in 15.0 % of images = 4.0), and the
column sums to 103.8 %. Label maps built from Table 10's columns give exactly its groups with this rule, and 11
Small classes (wall, truck, bus, train too) with the mean over all images (tests/test_class_stats.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from poodle.data.classes import IGNORE_INDEX

LARGE_THRESHOLD_PCT = 1.0  # Large if the mean pixel % over images containing the class is above this, else Small
COMMON_THRESHOLD_PCT = 20.0  # Common if present in more than this % of images, else Rare
# Stated in every statistics file: caches and reports written under the old rule (mean over all images) differ.
SIZE_RULE = "avg_pixel_pct = mean share over the images containing the class (Table 10)"


@dataclass
class ClassRow:
    name: str
    avg_pixel_pct: float  # mean share of the image's pixels over the images containing the class, in % (0 if none)
    total_pixel_pct: float  # the class's share of all pixels of all images, in %
    image_pct: float  # % of images in which the class appears at all
    size: str  # "L" or "S"
    frequency: str  # "C" or "R"


@dataclass
class ClassStats:
    rows: list[ClassRow]
    images: int
    pixels: int
    ignore_pct: float

    def group(self, size: str | None = None, frequency: str | None = None) -> list[str]:
        return [
            r.name
            for r in self.rows
            if (size is None or r.size == size) and (frequency is None or r.frequency == frequency)
        ]

    def sorted_rows(self) -> list[ClassRow]:
        return sorted(self.rows, key=lambda r: -r.avg_pixel_pct)

    def to_dict(self) -> dict:
        return {
            "images": self.images,
            "pixels": self.pixels,
            "ignore_pct": self.ignore_pct,
            "thresholds": {"large_avg_pixel_pct": LARGE_THRESHOLD_PCT, "common_image_pct": COMMON_THRESHOLD_PCT},
            "size_rule": SIZE_RULE,
            "classes": [asdict(r) for r in self.rows],
            "groups": {
                "large": self.group(size="L"),
                "small": self.group(size="S"),
                "common": self.group(frequency="C"),
                "rare": self.group(frequency="R"),
            },
        }

    def to_markdown(self) -> str:
        """Table 10 layout: one column per class, sorted by average pixel % per image."""
        rows = self.sorted_rows()
        lines = [
            "| Class | " + " | ".join(r.name for r in rows) + " |",
            "|---|" + "---|" * len(rows),
            "| Avg Pix. % / Im. | " + " | ".join(f"{r.avg_pixel_pct:.1f}" for r in rows) + " |",
            "| Total % of Pix. | " + " | ".join(f"{r.total_pixel_pct:.1f}" for r in rows) + " |",
            "| Total % of Im. | " + " | ".join(f"{r.image_pct:.1f}" for r in rows) + " |",
            "| Size Grp. | " + " | ".join(r.size for r in rows) + " |",
            "| Freq. Grp. | " + " | ".join(r.frequency for r in rows) + " |",
        ]
        return "\n".join(lines)

    def summary(self) -> str:
        return (
            f"{self.images} images; Small: {', '.join(self.group(size='S')) or '-'}; "
            f"Rare: {', '.join(self.group(frequency='R')) or '-'}; ignore {self.ignore_pct:.2f} % of pixels"
        )


class ClassCounter:
    """Accumulates per-image label histograms into `ClassStats` (streaming: one image at a time)."""

    def __init__(self, class_names: Sequence[str], ignore_index: int = IGNORE_INDEX):
        self.names = tuple(class_names)
        self.ignore_index = ignore_index
        n = len(self.names)
        self.present = np.zeros(n, dtype=np.int64)
        # Class pixel counts summed per image size: the mean share is then sum_s(count_s / s) / images_present,
        # exact for a dataset of one image size (BDD100K: 720x1280), so no float drift decides a class sitting on
        # the 1 % boundary (Table 10's pole: 1.0, Small).
        self.pixels_by_size: dict[int, np.ndarray] = {}
        self.images = self.pixels = self.ignored = 0

    def add_histogram(self, counts: np.ndarray, size: int) -> None:
        """`counts[v]` = pixels with label value v in one image of `size` pixels (values >= n other than
        `ignore_index` are not counted for any class)."""
        n = len(self.names)
        counts = np.asarray(counts, dtype=np.int64)
        c = np.zeros(n, dtype=np.int64)
        c[: min(n, counts.size)] = counts[:n]
        self.pixels_by_size.setdefault(int(size), np.zeros(n, dtype=np.int64))
        self.pixels_by_size[int(size)] += c
        self.present += c > 0
        self.ignored += int(counts[self.ignore_index]) if self.ignore_index < counts.size else 0
        self.images += 1
        self.pixels += int(size)

    def add(self, labels: np.ndarray) -> None:
        lab = np.asarray(labels)
        counts = np.bincount(lab.ravel().astype(np.int64), minlength=max(len(self.names), self.ignore_index + 1))
        self.add_histogram(counts, lab.size)

    def result(self) -> ClassStats:
        if self.images == 0:
            raise ValueError("class_statistics: no label maps given")
        n = len(self.names)
        total = np.zeros(n, dtype=np.int64)
        share_pct = np.zeros(n, dtype=np.float64)  # sum over images of the class's share, in %
        for size, count in self.pixels_by_size.items():
            total += count
            share_pct += 100.0 * count / size
        rows = []
        for i, name in enumerate(self.names):
            # Values stay unrounded (groups are decided on them); only the Markdown/summary rounds for display.
            avg = float(share_pct[i] / self.present[i]) if self.present[i] else 0.0
            img = float(100.0 * self.present[i] / self.images)
            rows.append(
                ClassRow(
                    name=name,
                    avg_pixel_pct=avg,
                    total_pixel_pct=float(100.0 * total[i] / self.pixels),
                    image_pct=img,
                    size="L" if avg > LARGE_THRESHOLD_PCT else "S",
                    frequency="C" if img > COMMON_THRESHOLD_PCT else "R",
                )
            )
        return ClassStats(rows=rows, images=self.images, pixels=self.pixels,
                          ignore_pct=100.0 * self.ignored / self.pixels)  # fmt: skip


def class_statistics(
    labels: Iterable[np.ndarray], class_names: Sequence[str], ignore_index: int = IGNORE_INDEX
) -> ClassStats:
    """Statistics over integer label maps (values 0..n-1, `ignore_index` ignored).

    Percentages are of all pixels of the image (ignored pixels count in the denominator), as in the paper;
    `avg_pixel_pct` averages over the images that contain the class (module docstring).
    """
    counter = ClassCounter(class_names, ignore_index)
    for lab in labels:
        counter.add(lab)
    return counter.result()


def class_statistics_from_histograms(
    histograms: np.ndarray, sizes: Sequence[int], class_names: Sequence[str], ignore_index: int = IGNORE_INDEX
) -> ClassStats:
    """`class_statistics` from per-image label histograms ((N, V) counts of each decoded label value) and the
    images' pixel counts: what the readout's mask scan produces, so no label map is decoded twice."""
    counter = ClassCounter(class_names, ignore_index)
    for counts, size in zip(np.asarray(histograms), sizes):
        counter.add_histogram(counts, int(size))
    return counter.result()


def median_frequency_weights(histograms: np.ndarray, num_classes: int) -> np.ndarray:
    """Median-frequency balancing (Eigen & Fergus 2015, as in SegNet): w_c = median_k f_k / f_c, where f_c is the
    pixels of class c divided by the labelled pixels of the images that contain c. `histograms` is (N images,
    >= num_classes) per-image label counts; values from num_classes on (ignore) are not counted. A class absent
    from every image gets weight 0; the median is over the present classes."""
    h = np.asarray(histograms, dtype=np.float64)
    counts = h[:, :num_classes]
    image_pixels = counts.sum(axis=1, keepdims=True)
    present = counts > 0
    class_pixels = counts.sum(axis=0)
    pixels_of_images_with = (image_pixels * present).sum(axis=0)
    freq = np.divide(class_pixels, pixels_of_images_with, out=np.zeros(num_classes), where=pixels_of_images_with > 0)
    seen = freq > 0
    if not seen.any():
        return np.zeros(num_classes)
    median = float(np.median(freq[seen]))
    return np.divide(median, freq, out=np.zeros(num_classes), where=seen)
