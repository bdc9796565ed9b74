"""Transforms for the segmentation readouts (numpy / cv2 on uint8; images bilinear, masks nearest).

Masks are never interpolated: nearest-neighbour resizing only copies existing label values, so no new class (or a
blend of a class and ignore) can appear. Both transforms take `(image, mask, index)` with image (H, W, 3) uint8 RGB
and mask (H, W) integer class ids / ignore, and return numpy arrays; `SegmentationDataset` turns them into tensors.

Train recipe (FlowE / mmseg): "random resize with shorter side in [512, 2048], random 512x1024 crop, flip" is
`SegTrainTransform(crop_size=(512, 1024), base_size=1024, scale_range=(0.5, 2.0))`: the image is rescaled so its
shorter side becomes `base_size * r` with r ~ U[scale_range] (aspect ratio kept), i.e. shorter side ~ U[512, 2048].
With `base_size=None` the ratio is relative to the image's own size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch

from poodle.data.classes import IGNORE_INDEX


def _nearest_rows(start: int, length: int, src: int, dst: int) -> np.ndarray:
    """Source indices of output pixels start..start+length-1 when resizing src -> dst pixels with exact nearest
    neighbour (the source pixel whose centre is nearest: floor((i + 0.5) * src / dst))."""
    idx = ((np.arange(start, start + length) + 0.5) * (src / dst)).astype(np.int64)
    return np.minimum(idx, src - 1)


def _resize(image: np.ndarray, size_hw: tuple[int, int], nearest: bool) -> np.ndarray:
    h, w = size_hw
    if image.shape[:2] == (h, w):
        return image
    if nearest:  # by indexing (any dtype): only copies existing values, so labels are never blended
        rows, cols = _nearest_rows(0, h, image.shape[0], h), _nearest_rows(0, w, image.shape[1], w)
        return image.take(rows, axis=0).take(cols, axis=1)
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)


def _resized_crop(
    image: np.ndarray, mask: np.ndarray, size_hw: tuple[int, int], box: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Equivalent to resizing both to `size_hw` and cropping `box` = (y0, x0, h, w), but only the crop is computed
    (rescaling a 720p frame to a 2048 shorter side first would cost ~10x more)."""
    y0, x0, ch, cw = box
    h, w = image.shape[:2]
    big_h, big_w = size_hw
    rows, cols = _nearest_rows(y0, ch, h, big_h), _nearest_rows(x0, cw, w, big_w)
    mask = mask.take(rows, axis=0).take(cols, axis=1)  # 4x faster than 2-D fancy indexing
    if (big_h, big_w) == (h, w):
        return image[y0 : y0 + ch, x0 : x0 + cw], mask
    # Bilinear with cv2.resize's half-pixel convention: src = (dst + 0.5) * scale - 0.5, dst offset by the crop.
    sy, sx = h / big_h, w / big_w
    m = np.array([[sx, 0.0, (x0 + 0.5) * sx - 0.5], [0.0, sy, (y0 + 0.5) * sy - 0.5]])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(image, m, (cw, ch), flags=flags, borderMode=cv2.BORDER_REPLICATE), mask


def _scaled_size(h: int, w: int, shorter: float) -> tuple[int, int]:
    s = shorter / min(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


class SegTrainTransform:
    """Random rescale -> random crop (padded with 0 / ignore when smaller) -> random horizontal flip.

    Randomness: with `seed` given, each call draws from `np.random.default_rng([seed, epoch, index])`, so a readout
    is reproducible regardless of worker count or order; call `set_epoch(e)` (or `dataset.set_epoch(e)`) each
    epoch so crops differ between epochs (with persistent DataLoader workers, recreate the iterator after it).
    Without a seed, fresh OS entropy is used per call.

    `cat_max_ratio` (mmseg RandomCrop): if set, re-draw the crop up to 10 times while one class covers more than
    this fraction of the crop's labelled pixels.
    """

    def __init__(
        self,
        crop_size: tuple[int, int] | int,
        scale_range: tuple[float, float] = (0.5, 2.0),
        base_size: int | None = None,
        hflip: bool = True,
        seed: int | None = None,
        ignore_index: int = IGNORE_INDEX,
        cat_max_ratio: float | None = None,
    ):
        ch, cw = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
        if ch < 1 or cw < 1:
            raise ValueError(f"crop_size must be positive, got {crop_size}")
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < lo <= hi, got {scale_range}")
        self.crop_size = (int(ch), int(cw))
        self.scale_range = (float(lo), float(hi))
        self.base_size = base_size
        self.hflip = hflip
        self.seed = seed
        self.ignore_index = ignore_index
        self.cat_max_ratio = cat_max_ratio
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _rng(self, index: int | None) -> np.random.Generator:
        if self.seed is None:
            return np.random.default_rng()
        return np.random.default_rng([self.seed, self.epoch, -1 if index is None else index])

    def __call__(self, image: np.ndarray, mask: np.ndarray, index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        if image.shape[:2] != mask.shape[:2]:
            raise ValueError(f"image {image.shape[:2]} and mask {mask.shape[:2]} differ in size")
        rng = self._rng(index)
        h, w = image.shape[:2]
        ratio = rng.uniform(*self.scale_range)
        base = self.base_size if self.base_size is not None else min(h, w)
        size = _scaled_size(h, w, base * ratio)

        ch, cw = self.crop_size
        crop_h, crop_w = min(ch, size[0]), min(cw, size[1])
        for _ in range(10 if self.cat_max_ratio is not None else 1):
            y0 = int(rng.integers(0, size[0] - crop_h + 1))
            x0 = int(rng.integers(0, size[1] - crop_w + 1))
            rows, cols = _nearest_rows(y0, crop_h, h, size[0]), _nearest_rows(x0, crop_w, w, size[1])
            if self.cat_max_ratio is None or self._balanced(mask.take(rows, axis=0).take(cols, axis=1)):
                break
        image, mask = _resized_crop(image, mask, size, (y0, x0, crop_h, crop_w))
        if image.shape[:2] != (ch, cw):  # smaller than the crop: pad bottom/right (image 0, mask ignore)
            ph, pw = ch - image.shape[0], cw - image.shape[1]
            image = np.pad(image, ((0, ph), (0, pw), (0, 0)), constant_values=0)
            mask = np.pad(mask, ((0, ph), (0, pw)), constant_values=self.ignore_index)

        if self.hflip and rng.random() < 0.5:
            # cv2.flip is ~10x faster than copying a negative-stride (H, W, 3) view
            image = cv2.flip(np.ascontiguousarray(image), 1) if image.dtype == np.uint8 else image[:, ::-1]
            mask = mask[:, ::-1]
        return np.ascontiguousarray(image), np.ascontiguousarray(mask)

    def _balanced(self, mask: np.ndarray) -> bool:
        labels = mask[mask != self.ignore_index]
        if labels.size == 0:
            return True
        counts = np.bincount(labels.ravel().astype(np.int64))
        counts = counts[counts > 0]
        return len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio

    def __repr__(self) -> str:
        return (
            f"SegTrainTransform(crop_size={self.crop_size}, scale_range={self.scale_range}, "
            f"base_size={self.base_size}, hflip={self.hflip}, seed={self.seed})"
        )


class SegEvalTransform:
    """Optionally resize the *image* only: `resize=int` sets the shorter side, `resize=(h, w)` a fixed size.

    The mask stays at its full (label) resolution because metrics are computed there: the evaluator upsamples the
    logits to the mask's size (with the collate's `image_size` giving the valid region when images were padded).
    """

    def __init__(self, resize: int | tuple[int, int] | None = None):
        self.resize = resize

    def __call__(self, image: np.ndarray, mask: np.ndarray, index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        if self.resize is not None:
            h, w = image.shape[:2]
            if isinstance(self.resize, int):
                size = _scaled_size(h, w, self.resize)
            else:
                size = (int(self.resize[0]), int(self.resize[1]))
            image = _resize(image, size, nearest=False)
        return image, mask

    def __repr__(self) -> str:
        return f"SegEvalTransform(resize={self.resize})"


def collate_segmentation(samples: Sequence[dict[str, Any]], ignore_index: int = IGNORE_INDEX) -> dict[str, Any]:
    """Stack `{"image", "mask", "name"}` samples into a batch.

    Images stay uint8 (normalise on the device). Samples of different sizes are padded bottom/right (image 0, mask
    ignore); `image_size` / `mask_size` ((B, 2) int64, H and W) record each sample's valid region.
    """
    if not samples:
        raise ValueError("collate_segmentation got an empty batch")
    images = [s["image"] for s in samples]
    masks = [s["mask"] for s in samples]
    image_size = torch.tensor([list(im.shape[-2:]) for im in images], dtype=torch.int64)
    mask_size = torch.tensor([list(m.shape[-2:]) for m in masks], dtype=torch.int64)
    return {
        "image": _stack_padded(images, 0),
        "mask": _stack_padded([m.long() for m in masks], ignore_index),
        "name": [s["name"] for s in samples],
        "image_size": image_size,
        "mask_size": mask_size,
    }


def _stack_padded(tensors: list[torch.Tensor], fill: int) -> torch.Tensor:
    if all(t.shape == tensors[0].shape for t in tensors):
        return torch.stack(tensors)
    h = max(t.shape[-2] for t in tensors)
    w = max(t.shape[-1] for t in tensors)
    out = tensors[0].new_full((len(tensors), *tensors[0].shape[:-2], h, w), fill)
    for i, t in enumerate(tensors):
        out[i, ..., : t.shape[-2], : t.shape[-1]] = t
    return out
