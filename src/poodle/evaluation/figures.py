"""Readout figures drawn with PIL and numpy only (no matplotlib): predictions, PCA of features, per-class IoU.

- `predictions.png`: one row per val image: image | ground truth | prediction, in the dataset palette.
- `features_pca.png`: one row per image: image | first 3 principal components of the dense features as RGB
  (components fitted on all positions of all shown images, so colours are comparable across rows).
- `per_class_iou.png`: horizontal bars sorted by IoU, coloured with the palette, class names and values as text.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

Palette = Sequence[tuple[int, int, int]]


def colorize(labels: np.ndarray, palette: Palette, ignore_index: int = 255) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8; ignore and unknown ids are black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: min(len(palette), 256)] = np.asarray(palette[:256], dtype=np.uint8)
    if 0 <= ignore_index < 256:
        lut[ignore_index] = 0
    return lut[np.clip(labels, 0, 255).astype(np.int64)]


def _hstack(images: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    h = max(im.shape[0] for im in images)
    parts = []
    for i, im in enumerate(images):
        if im.shape[0] != h:
            im = np.asarray(Image.fromarray(im).resize((round(im.shape[1] * h / im.shape[0]), h), Image.NEAREST))
        parts.append(im)
        if i < len(images) - 1:
            parts.append(np.full((h, gap, 3), 255, np.uint8))
    return np.concatenate(parts, axis=1)


def _vstack(rows: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    w = max(r.shape[1] for r in rows)
    parts = []
    for i, r in enumerate(rows):
        if r.shape[1] < w:
            r = np.pad(r, ((0, 0), (0, w - r.shape[1]), (0, 0)), constant_values=255)
        parts.append(r)
        if i < len(rows) - 1:
            parts.append(np.full((gap, w, 3), 255, np.uint8))
    return np.concatenate(parts, axis=0)


def _titled(grid: np.ndarray, titles: Sequence[str], column_width: int) -> Image.Image:
    font = ImageFont.load_default()
    band = 16
    canvas = Image.new("RGB", (grid.shape[1], grid.shape[0] + band), "white")
    canvas.paste(Image.fromarray(grid), (0, band))
    draw = ImageDraw.Draw(canvas)
    for i, t in enumerate(titles):
        draw.text((i * (column_width + 4) + 2, 2), t, fill="black", font=font)
    return canvas


def prediction_grid(
    samples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], palette: Palette, ignore_index: int = 255
) -> Image.Image:
    """samples: (image (H, W, 3) uint8, ground truth (H, W), prediction (H, W)) per row."""
    rows = [_hstack([im, colorize(gt, palette, ignore_index), colorize(pr, palette, ignore_index)])
            for im, gt, pr in samples]  # fmt: skip
    return _titled(_vstack(rows), ["image", "ground truth", "prediction"], samples[0][0].shape[1])


def pca_rgb(features: Sequence[torch.Tensor], shared: bool = True) -> list[np.ndarray]:
    """(C, h, w) feature maps -> (h, w, 3) uint8 images of their first 3 principal components.

    shared=True fits one PCA on all positions of all maps and normalises with shared percentiles (colours mean
    the same thing in every image); shared=False does both per image.
    """
    flats = [f.detach().float().cpu().flatten(1).T for f in features]  # (h*w, C) each

    def project(x: torch.Tensor, fit: torch.Tensor) -> torch.Tensor:
        mean = fit.mean(0, keepdim=True)
        # Top-3 right singular vectors of the centred data = principal axes.
        _, _, v = torch.linalg.svd(fit - mean, full_matrices=False)
        k = min(3, v.shape[0])
        proj = (x - mean) @ v[:k].T
        if k < 3:
            proj = torch.cat([proj, proj.new_zeros(proj.shape[0], 3 - k)], dim=1)
        return proj

    if shared:
        fit = torch.cat(flats)
        projs = [project(x, fit) for x in flats]
        allp = torch.cat(projs)
        bounds = [(torch.quantile(allp, 0.01, dim=0), torch.quantile(allp, 0.99, dim=0))] * len(projs)
    else:
        projs = [project(x, x) for x in flats]
        bounds = [(torch.quantile(p, 0.01, dim=0), torch.quantile(p, 0.99, dim=0)) for p in projs]
    out = []
    for f, p, (lo, hi) in zip(features, projs, bounds):
        rgb = ((p - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
        out.append((rgb.reshape(f.shape[-2], f.shape[-1], 3).numpy() * 255).astype(np.uint8))
    return out


def pca_grid(images: Sequence[np.ndarray], features: Sequence[torch.Tensor], shared: bool = True) -> Image.Image:
    pcs = pca_rgb(features, shared)
    rows = []
    for im, pc in zip(images, pcs):
        up = np.asarray(Image.fromarray(pc).resize((im.shape[1], im.shape[0]), Image.NEAREST))
        rows.append(_hstack([im, up]))
    return _titled(_vstack(rows), ["image", "features: PCA (3 components -> RGB)"], images[0].shape[1])


def iou_bar_chart(classes: Sequence[str], ious: Sequence[float | None], palette: Palette) -> Image.Image:
    """Horizontal bars of per-class IoU (fractions), sorted from best to worst; NaN / None classes listed last."""
    font = ImageFont.load_default()
    vals = [float("nan") if v is None else float(v) for v in ious]
    order = sorted(range(len(classes)), key=lambda i: (np.isnan(vals[i]), -np.nan_to_num(vals[i], nan=0.0)))
    row_h, label_w, bar_w, pad = 16, 130, 300, 6
    height = pad * 2 + 18 + row_h * len(classes)
    img = Image.new("RGB", (label_w + bar_w + 60, height), "white")
    d = ImageDraw.Draw(img)
    d.text((pad, pad), "per-class IoU (%)", fill="black", font=font)
    top = pad + 18
    for r, i in enumerate(order):
        y = top + r * row_h
        d.text((pad, y + 2), str(classes[i])[:20], fill="black", font=font)
        v = vals[i]
        if np.isnan(v):
            d.text((label_w, y + 2), "n/a (absent)", fill="gray", font=font)
            continue
        colour = tuple(int(c) for c in palette[i]) if i < len(palette) else (100, 100, 100)
        w = int(round(bar_w * max(0.0, min(1.0, v))))
        d.rectangle([label_w, y + 2, label_w + max(w, 1), y + row_h - 2], fill=colour, outline=(60, 60, 60))
        d.text((label_w + w + 4, y + 2), f"{100 * v:.1f}", fill="black", font=font)
    return img


def write_figures(
    out_dir: str | Path,
    samples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    features: Sequence[torch.Tensor],
    classes: Sequence[str],
    palette: Palette,
    per_class_iou: Sequence[float | None],
    ignore_index: int = 255,
) -> dict[str, str]:
    """Write the three figures into out_dir/figures/ and return {figure: path}."""
    folder = Path(out_dir) / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    if samples:
        paths["predictions"] = folder / "predictions.png"
        prediction_grid(samples, palette, ignore_index).save(paths["predictions"])
    if features:
        paths["features_pca"] = folder / "features_pca.png"
        pca_grid([s[0] for s in samples], features).save(paths["features_pca"])
    paths["per_class_iou"] = folder / "per_class_iou.png"
    iou_bar_chart(classes, per_class_iou, palette).save(paths["per_class_iou"])
    return {k: str(v) for k, v in paths.items()}
