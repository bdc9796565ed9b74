"""Per-class label statistics and the size / frequency groups of spec 6.6 (paper App. H, Table 10).

Reused for any semantic-segmentation label set (BDD100K, Cityscapes, SynthDrive): pass label maps and names.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from poodle.data.classes import IGNORE_INDEX

LARGE_THRESHOLD_PCT = 1.0  # Large if the average pixel % per image is above this, else Small
COMMON_THRESHOLD_PCT = 20.0  # Common if present in more than this % of images, else Rare


@dataclass
class ClassRow:
    name: str
    avg_pixel_pct: float  # mean over images of the class's share of the image's pixels, in %
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


def class_statistics(
    labels: Iterable[np.ndarray], class_names: Sequence[str], ignore_index: int = IGNORE_INDEX
) -> ClassStats:
    """Statistics over integer label maps (values 0..n-1, `ignore_index` ignored).

    Percentages are of all pixels of the image (ignored pixels count in the denominator), as in the paper.
    """
    n = len(class_names)
    pixel_sum = np.zeros(n, dtype=np.int64)
    share_sum = np.zeros(n, dtype=np.float64)
    present = np.zeros(n, dtype=np.int64)
    images = pixels = ignored = 0
    for lab in labels:
        lab = np.asarray(lab)
        counts = np.bincount(lab.ravel().astype(np.int64), minlength=max(n, ignore_index + 1))
        size = lab.size
        pixel_sum += counts[:n]
        share_sum += counts[:n] / size
        present += counts[:n] > 0
        ignored += int(counts[ignore_index]) if ignore_index < counts.size else 0
        images += 1
        pixels += size
    if images == 0:
        raise ValueError("class_statistics: no label maps given")
    rows = []
    for i, name in enumerate(class_names):
        avg = 100.0 * share_sum[i] / images
        img = 100.0 * present[i] / images
        rows.append(
            ClassRow(
                name=name,
                avg_pixel_pct=round(float(avg), 4),
                total_pixel_pct=round(float(100.0 * pixel_sum[i] / pixels), 4),
                image_pct=round(float(img), 4),
                size="L" if avg > LARGE_THRESHOLD_PCT else "S",
                frequency="C" if img > COMMON_THRESHOLD_PCT else "R",
            )
        )
    return ClassStats(rows=rows, images=images, pixels=pixels, ignore_pct=round(100.0 * ignored / pixels, 4))
