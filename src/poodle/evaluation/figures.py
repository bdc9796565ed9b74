"""Readout figures, drawn with PIL and numpy only (no matplotlib): predictions, PCA of features, per-class IoU.

- `predictions.png`: one row per val image: image | ground truth | prediction, with a legend of the classes shown.
- `features_pca.png`: one row per image: image | first 3 principal components of the dense features as RGB, one
  PCA for all rows (colours comparable across rows) | the same, fitted and contrast-stretched per image (structure
  within an image, visible even where the shared panel is nearly uniform); the caption gives explained variances.
- `per_class_iou.png`: horizontal bars sorted by IoU, coloured with the palette, with an IoU axis and values.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from poodle.figure_layout import font, label_panel, swatches, text_size, titled

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


def prediction_grid(
    samples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    palette: Palette,
    ignore_index: int = 255,
    classes: Sequence[str] = (),
    context: str = "",
) -> Image.Image:
    """samples: (image (H, W, 3) uint8, ground truth (H, W), prediction (H, W)) per row; legend of `classes`."""
    rows = [_hstack([im, colorize(gt, palette, ignore_index), colorize(pr, palette, ignore_index)])
            for im, gt, pr in samples]  # fmt: skip
    grid = _vstack(rows)
    size = text_size(grid.shape[1])
    shown = np.unique(np.concatenate([np.concatenate([gt.ravel(), pr.ravel()]) for _, gt, pr in samples]))
    ids = [int(c) for c in shown if c != ignore_index and c < min(len(classes), len(palette))]
    below = [swatches([(str(classes[c]), palette[c]) for c in ids], grid.shape[1], size, "classes:")] if ids else []
    notes = []
    if any((gt == ignore_index).any() for _, gt, _ in samples):
        notes.append("Black in the ground truth: ignored pixels (unlabelled, not scored).")
    title = "Predicted classes vs ground truth" + (f": {context}" if context else "")
    widths = [samples[0][0].shape[1]] * 3
    return titled(grid, title, ["image", "ground truth", "prediction"], widths, below, notes)


def _pca(x: torch.Tensor, fit: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """Projection of `x` (N, C) on the top-3 principal axes of `fit`, and the variance share of each axis."""
    mean = fit.mean(0, keepdim=True)
    _, s, v = torch.linalg.svd(fit - mean, full_matrices=False)  # right singular vectors = principal axes
    k = min(3, v.shape[0])
    proj = (x - mean) @ v[:k].T
    if k < 3:
        proj = torch.cat([proj, proj.new_zeros(proj.shape[0], 3 - k)], dim=1)
    var = s**2
    share = (var[:k] / var.sum().clamp_min(1e-12)).tolist()
    return proj, share + [0.0] * (3 - k)


def pca_rgb(features: Sequence[torch.Tensor], shared: bool = True) -> tuple[list[np.ndarray], list[list[float]]]:
    """(C, h, w) feature maps -> (h, w, 3) uint8 images of their first 3 principal components, and the share of
    the variance each component explains (one list for shared=True, one per map otherwise).

    shared=True fits one PCA on all positions of all maps and normalises with shared percentiles (colours mean
    the same thing in every image); shared=False does both per image (a contrast stretch per image).
    """
    flats = [f.detach().float().cpu().flatten(1).T for f in features]  # (h*w, C) each
    if shared:
        fit = torch.cat(flats)
        allp, share = _pca(fit, fit)
        projs, shares = list(allp.split([len(x) for x in flats])), [share]
        bounds = [(torch.quantile(allp, 0.01, dim=0), torch.quantile(allp, 0.99, dim=0))] * len(projs)
    else:
        fitted = [_pca(x, x) for x in flats]
        projs, shares = [p for p, _ in fitted], [sh for _, sh in fitted]
        bounds = [(torch.quantile(p, 0.01, dim=0), torch.quantile(p, 0.99, dim=0)) for p in projs]
    out = []
    for f, p, (lo, hi) in zip(features, projs, bounds):
        rgb = ((p - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
        out.append((rgb.reshape(f.shape[-2], f.shape[-1], 3).numpy() * 255).astype(np.uint8))
    return out, shares


def _pct(shares: Sequence[float]) -> str:
    return " / ".join(f"{100 * v:.0f}" for v in shares) + " %"


def pca_grid(images: Sequence[np.ndarray], features: Sequence[torch.Tensor], context: str = "") -> Image.Image:
    """image | PCA fitted on all rows (shared colours) | PCA fitted and stretched per image, with a caption."""
    shared_pcs, (shared_share,) = pca_rgb(features, shared=True)
    own_pcs, own_shares = pca_rgb(features, shared=False)
    size = text_size(3 * images[0].shape[1])
    rows = []
    for im, pc, own, share in zip(images, shared_pcs, own_pcs, own_shares):
        up = [np.asarray(Image.fromarray(p).resize((im.shape[1], im.shape[0]), Image.NEAREST)) for p in (pc, own)]
        rows.append(_hstack([im, up[0], label_panel(up[1], f"PC1-3: {_pct(share)}", size - 3)]))
    grid = _vstack(rows)
    h, w = features[0].shape[-2:]
    notes = [
        f"Each colour channel (R, G, B) is one principal component of the {features[0].shape[0]}-channel backbone "
        f"features at {h}x{w} positions (shown enlarged, without smoothing); similar colours = similar features.",
        f"Middle: one PCA fitted on all rows, one colour scale, so colours compare across rows; its components "
        f"explain {_pct(shared_share)} of the feature variance. A nearly uniform panel means that image's features "
        "vary little along the directions that separate the images (common for an untrained or briefly trained "
        "backbone), not a failure to draw.",
        "Right: PCA fitted on that image alone, stretched to its own 1st-99th percentiles, so structure within "
        "the image shows; colours do not compare across rows. The label gives its components' variance shares.",
    ]
    title = "Dense features as colours (PCA)" + (f": {context}" if context else "")
    columns = ["image", "PCA over all rows", "PCA per image"]
    return titled(grid, title, columns, [images[0].shape[1]] * 3, notes=notes)


def iou_bar_chart(
    classes: Sequence[str], ious: Sequence[float | None], palette: Palette, context: str = ""
) -> Image.Image:
    """Horizontal bars of per-class IoU (fractions), sorted from best to worst; NaN / None classes listed last."""
    size = 14
    f = font(size)
    vals = [float("nan") if v is None else float(v) for v in ious]
    order = sorted(range(len(classes)), key=lambda i: (np.isnan(vals[i]), -np.nan_to_num(vals[i], nan=0.0)))
    row_h, bar_w, pad = size + 6, 360, 6
    label_w = max(int(f.getlength(str(c)[:24])) for c in classes) + 2 * pad
    top = pad + row_h + 4  # axis labels above the bars
    height = top + row_h * len(classes) + pad
    img = Image.new("RGB", (label_w + bar_w + 60, height), "white")
    d = ImageDraw.Draw(img)
    for t in range(0, 101, 20):  # IoU axis: grid lines and tick labels
        x = label_w + bar_w * t / 100
        d.line([x, top - 2, x, height - pad], fill=(225, 225, 225))
        d.text((x - f.getlength(str(t)) / 2, pad), str(t), fill="black", font=f)
    d.text((pad, pad), "IoU (%)", fill="black", font=f)
    for r, i in enumerate(order):
        y = top + r * row_h
        d.text((pad, y + 2), str(classes[i])[:24], fill="black", font=f)
        v = vals[i]
        if np.isnan(v):
            d.text((label_w + 4, y + 2), "n/a", fill="gray", font=f)
            continue
        colour = tuple(int(c) for c in palette[i]) if i < len(palette) else (100, 100, 100)
        w = int(round(bar_w * max(0.0, min(1.0, v))))
        d.rectangle([label_w, y + 3, label_w + max(w, 1), y + row_h - 3], fill=colour, outline=(60, 60, 60))
        d.text((label_w + w + 4, y + 2), f"{100 * v:.1f}", fill="black", font=f)
    notes = ["Sorted from best to worst; bar colour = the class's colour in predictions.png."]
    if any(np.isnan(v) for v in vals):
        notes.append("n/a: the class occurs neither in the ground truth nor in the predictions, so it has no IoU "
                     "and is left out of the mIoU.")  # fmt: skip
    title = "Per-class IoU" + (f": {context}" if context else " (val split)")
    return titled(img, title, notes=notes)


def write_figures(
    out_dir: str | Path,
    samples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    features: Sequence[torch.Tensor],
    classes: Sequence[str],
    palette: Palette,
    per_class_iou: Sequence[float | None],
    ignore_index: int = 255,
    context: str = "",
) -> dict[str, str]:
    """Write the three figures into out_dir/figures/ and return {figure: path}; `context` (e.g. method, dataset,
    readout) goes into each title."""
    folder = Path(out_dir) / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    if samples:
        paths["predictions"] = folder / "predictions.png"
        prediction_grid(samples, palette, ignore_index, classes, context).save(paths["predictions"])
    if features:
        paths["features_pca"] = folder / "features_pca.png"
        pca_grid([s[0] for s in samples], features, context=context).save(paths["features_pca"])
    paths["per_class_iou"] = folder / "per_class_iou.png"
    iou_bar_chart(classes, per_class_iou, palette, context).save(paths["per_class_iou"])
    return {k: str(v) for k, v in paths.items()}
