"""Subcrop-hit probability vs pixel probability (PooDLe paper, App. C, Fig. 10b).

PooDLe's pooled loss on small subcrops is argued to up-weight small objects: the fraction of subcrops that are
"hit" by an object (the object covers >= `threshold` of the subcrop) is much larger than the object's share of the
pixels, which is what a per-pixel dense loss sees. This reproduces the empirical simulation of App. C: per image
`crops_per_image` global crops (2:1 aspect, area ~U[global_area] of the image, random position), each with
`subcrops_per_crop` subcrops (square, area ~U[subcrop_area] of the global crop, uniformly placed inside it).

Object size: the paper bins by "object size" without saying how objects are delimited. Here an object is one
foreground *class* inside one global crop, and its size is the class's pixel share of the crop (= the pixel
probability). Connected components would split classes into instances but need scipy; the class-level reading
merges, e.g., several cars of a crop into one larger "object", so it understates the gain for the smallest
instances rather than overstating it.

Everything is counted with one integral image per (image, present foreground class) and fancy indexing: no Python
loop over subcrops.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from poodle.data.classes import BDD100K_CLASSES

if TYPE_CHECKING:
    from PIL import Image

# App. C foreground classes: pole, traffic light, traffic sign and person ... bicycle of the BDD100K/Cityscapes list.
PAPER_FOREGROUND: tuple[str, ...] = BDD100K_CLASSES[5:8] + BDD100K_CLASSES[11:]


def foreground_indices(class_names: Sequence[str], names: Iterable[str] = PAPER_FOREGROUND) -> list[int]:
    """Indices of `names` in `class_names`, matched case-insensitively with '_' / '-' read as spaces."""

    def norm(s: str) -> str:
        return " ".join(s.lower().replace("_", " ").replace("-", " ").split())

    wanted = {norm(n) for n in names}
    return [i for i, c in enumerate(class_names) if norm(c) in wanted]


@dataclass
class HitBin:
    size_min: float  # object size (pixel share of the global crop) range of the bin
    size_max: float
    pixel_probability: float  # mean over the bin's (crop, class) pairs
    hit_probability: float
    gain: float  # hit_probability / pixel_probability
    count: int  # (crop, class) pairs in the bin


@dataclass
class SubcropHitResult:
    bins: list[HitBin]
    images: int
    pairs: int  # (global crop, present foreground class) pairs
    threshold: float
    foreground: list[str]
    settings: dict = field(default_factory=dict)
    # Raw per-pair values (kept for re-binning / plotting, not written to JSON).
    sizes: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    hits: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def to_dict(self) -> dict:
        return {
            "images": self.images,
            "pairs": self.pairs,
            "threshold": self.threshold,
            "foreground": self.foreground,
            "settings": self.settings,
            "bins": [asdict(b) for b in self.bins],
        }

    def to_markdown(self) -> str:
        lines = [
            "| bin | object size (% of crop) | pixel prob. (%) | subcrop-hit prob. (%) | gain (hit / pixel) | pairs |",
            "|---:|---|---:|---:|---:|---:|",
        ]
        for i, b in enumerate(self.bins):
            lines.append(
                f"| {i + 1} | {100 * b.size_min:.2f} - {100 * b.size_max:.2f} | {100 * b.pixel_probability:.2f} "
                f"| {100 * b.hit_probability:.2f} | {b.gain:.2f} | {b.count} |"
            )
        return "\n".join(lines)


def _crop_boxes(
    rng: np.random.Generator, h: int, w: int, n: int, area: tuple[float, float], aspect: float
) -> np.ndarray:
    """n integer boxes (y0, x0, bh, bw) of width/height `aspect`, area fraction ~U[area] of an h x w region,
    uniformly placed inside it (clamped to the region)."""
    a = rng.uniform(area[0], area[1], size=n)
    bh = np.clip(np.rint(np.sqrt(a * h * w / aspect)), 1, h).astype(np.int64)
    bw = np.clip(np.rint(bh * aspect), 1, w).astype(np.int64)
    # rng.random * (range + 1), floored: an integer uniform over [0, h - bh] for each box at once.
    y0 = np.floor(rng.random(n) * (h - bh + 1)).astype(np.int64)
    x0 = np.floor(rng.random(n) * (w - bw + 1)).astype(np.int64)
    return np.stack([y0, x0, bh, bw], axis=1)


def _box_sums(integral: np.ndarray, y0: np.ndarray, x0: np.ndarray, y1: np.ndarray, x1: np.ndarray) -> np.ndarray:
    """integral (C, H+1, W+1); box edges (K,) -> pixel counts (C, K)."""
    return integral[:, y1, x1] - integral[:, y0, x1] - integral[:, y1, x0] + integral[:, y0, x0]


def subcrop_hit_analysis(
    masks: Iterable[np.ndarray],
    class_names: Sequence[str],
    foreground: Sequence[int],
    global_area: tuple[float, float] = (0.16, 0.45),
    subcrop_area: tuple[float, float] = (0.02, 0.03),
    subcrops_per_crop: int = 4096,
    crops_per_image: int = 2,
    threshold: float = 0.05,
    bins: int = 10,
    seed: int = 0,
) -> SubcropHitResult:
    """Subcrop-hit vs pixel probability of the `foreground` classes over `masks` ((H, W) label maps), binned in
    `bins` equal-count (quantile) bins of object size. See the module docstring for what an "object" is."""
    if not foreground:
        raise ValueError("no foreground classes")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if subcrops_per_crop < 1 or crops_per_image < 1 or bins < 1:
        raise ValueError("subcrops_per_crop, crops_per_image and bins must be >= 1")
    fg = np.asarray(sorted(set(int(c) for c in foreground)), dtype=np.int64)
    rng = np.random.default_rng(seed)
    sizes: list[np.ndarray] = []
    hits: list[np.ndarray] = []
    images = 0
    for mask in masks:
        m = np.asarray(mask)
        if m.ndim != 2:
            raise ValueError(f"label maps must be (H, W), got shape {m.shape}")
        images += 1
        h, w = m.shape
        # Random draws do not depend on the image's content, so results are reproducible for a seed.
        crops = _crop_boxes(rng, h, w, crops_per_image, global_area, aspect=2.0)
        subs = [_crop_boxes(rng, int(c[2]), int(c[3]), subcrops_per_crop, subcrop_area, 1.0) for c in crops]
        present = fg[np.isin(fg, np.unique(m))]
        if len(present) == 0:
            continue
        onehot = (m[None] == present[:, None, None]).astype(np.int32)  # (C, H, W)
        integral = np.zeros((len(present), h + 1, w + 1), dtype=np.int64)
        integral[:, 1:, 1:] = onehot.cumsum(1).cumsum(2)
        for (cy, cx, ch, cw), sub in zip(crops, subs):
            ii = integral
            crop_px = ii[:, cy + ch, cx + cw] - ii[:, cy, cx + cw] - ii[:, cy + ch, cx] + ii[:, cy, cx]
            inside = crop_px > 0  # an absent class has no object to hit: not counted
            if not inside.any():
                continue
            sy, sx = cy + sub[:, 0], cx + sub[:, 1]
            counts = _box_sums(integral[inside], sy, sx, sy + sub[:, 2], sx + sub[:, 3])  # (C', K)
            hit = counts >= threshold * (sub[:, 2] * sub[:, 3])[None]
            sizes.append(crop_px[inside] / float(ch * cw))
            hits.append(hit.mean(1))
    size_arr = np.concatenate(sizes) if sizes else np.zeros(0)
    hit_arr = np.concatenate(hits) if hits else np.zeros(0)
    # Equal-count bins over the sorted sizes: robust to ties (e.g. many crops fully covered by one class), where
    # np.quantile edges would collapse. Fewer pairs than bins -> fewer (non-empty) bins.
    order = np.argsort(size_arr, kind="stable")
    out: list[HitBin] = []
    for idx in np.array_split(order, min(bins, len(order))) if len(order) else []:
        s, p = size_arr[idx], hit_arr[idx]
        pix, hp = float(s.mean()), float(p.mean())
        out.append(HitBin(float(s.min()), float(s.max()), pix, hp, hp / pix, int(len(idx))))
    settings = {
        "global_area": list(global_area),
        "subcrop_area": list(subcrop_area),
        "subcrops_per_crop": subcrops_per_crop,
        "crops_per_image": crops_per_image,
        "bins": bins,
        "seed": seed,
    }
    names = [str(class_names[i]) for i in fg]
    return SubcropHitResult(out, images, len(size_arr), threshold, names, settings, size_arr, hit_arr)


def hit_plot(result: SubcropHitResult, title: str = "subcrop hit vs pixel probability") -> Image.Image:
    """Fig. 10b-style line plot: x = object size (pixel probability), y = probability; subcrop-hit curve per bin
    and the pixel probability (identity line)."""
    from PIL import Image, ImageDraw

    from poodle.figure_layout import font, titled

    f = font(13)
    width, height = 520, 380
    left, right, top, bottom = 64, 20, 24, 46
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    pw, ph = width - left - right, height - top - bottom

    def xy(x: float, y: float) -> tuple[float, float]:
        return left + x * pw, top + (1.0 - y) * ph

    for t in np.linspace(0.0, 1.0, 6):  # grid + tick labels
        gx, _ = xy(t, 0)
        _, gy = xy(0, t)
        d.line([gx, top, gx, top + ph], fill=(225, 225, 225))
        d.line([left, gy, left + pw, gy], fill=(225, 225, 225))
        d.line([gx, top + ph, gx, top + ph + 4], fill="black")
        d.line([left - 4, gy, left, gy], fill="black")
        d.text((gx - 9, top + ph + 6), f"{t:.1f}", fill="black", font=f)
        d.text((left - 32, gy - 8), f"{t:.1f}", fill="black", font=f)
    d.rectangle([left, top, left + pw, top + ph], outline="black")
    xlabel = "object size = the object's share of the global crop's pixels"
    d.text((left + (pw - f.getlength(xlabel)) / 2, height - 20), xlabel, fill="black", font=f)
    d.text((4, 4), "probability", fill="black", font=f)
    blue, orange = (31, 119, 180), (255, 127, 14)
    d.line([xy(0, 0), xy(1, 1)], fill=orange, width=2)  # pixel probability = object size
    pts = [xy(b.pixel_probability, b.hit_probability) for b in result.bins]
    if len(pts) > 1:
        d.line(pts, fill=blue, width=2)
    for px, py in pts:
        d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=blue)
    lx, ly = left + pw - 236, top + ph - 48  # legend, bottom right (below the curves' usual path)
    d.rectangle([lx - 6, ly - 6, lx + 230, ly + 38], fill="white", outline=(150, 150, 150))
    d.line([lx, ly + 8, lx + 20, ly + 8], fill=blue, width=2)
    d.text((lx + 26, ly), f"a subcrop is hit (>= {100 * result.threshold:g} % object)", fill="black", font=f)
    d.line([lx, ly + 27, lx + 20, ly + 27], fill=orange, width=2)
    d.text((lx + 26, ly + 19), "a pixel is on the object", fill="black", font=f)
    notes = [
        f"Points: {len(result.bins)} bins of object size (quantiles over {result.pairs} (global crop, foreground "
        f"class) pairs of {result.images} label maps). Blue above orange: a loss on small subcrops sees small "
        "objects more often than a per-pixel loss does (the PooDLe paper's App. C, Fig. 10b).",
    ]
    return titled(img, title, notes=notes)
