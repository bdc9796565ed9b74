"""Image-SSL views on the device, batched: random resized crops with their boxes, flips, colour, blur, solarise.

The baselines (BYOL, DINO, DenseCL, PixPro) see frames through the augmentations of their own recipes. Each view
here is torchvision's `RandomResizedCrop` (same sampling rule, the same antialiased bilinear resize via
`poodle.data.subcrops.crop_and_resize`), a horizontal flip, and the photometric chain of
`poodle.data.augment.photometric` with a per-view blur and solarise probability (BYOL's asymmetric recipe). The
crop box and the flip of every view are returned: PixPro needs them to find its positive pixel pairs.

One generalisation: for a non-square output (the paper trains its R50 baselines on 512 x 1024 crops), the aspect
ratio range applies relative to the output's, `w / h = ratio * out_w / out_h`, so a ratio of 1 is undistorted.
For square outputs this is exactly torchvision's rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from poodle.config import AugmentConfig
from poodle.data.augment import normalize, photometric, rand, to_float_image
from poodle.data.subcrops import crop_and_resize

RRC_TRIES = 10  # torchvision's RandomResizedCrop.get_params


@dataclass
class Views:
    images: Tensor  # (B, 3, h, w) float32, ImageNet-normalised
    boxes: Tensor  # (B, 4) float x1, y1, x2, y2: pixel edges of the crop in its source frame (integers)
    flipped: Tensor  # (B,) bool: the crop was mirrored after cropping


def random_resized_boxes(
    n: int,
    frame_hw: tuple[int, int],
    scale: tuple[float, float],
    ratio: tuple[float, float],
    device: torch.device | str,
    generator: torch.Generator | None = None,
    out_aspect: float = 1.0,
) -> Tensor:
    """(n, 4) boxes x1, y1, x2, y2 drawn as torchvision's `RandomResizedCrop.get_params` draws them, batched.

    Per box: up to 10 tries of area ~ U(scale) * H * W and log-aspect ~ U(log ratio) (times `out_aspect`), side
    lengths rounded; the first try that fits is placed uniformly; if none fits, the central crop clamped to the
    ratio range. No host syncs.
    """
    h, w = frame_hw
    area = float(h * w)
    lo, hi = ratio[0] * out_aspect, ratio[1] * out_aspect
    target = area * (scale[0] + (scale[1] - scale[0]) * rand((n, RRC_TRIES), device, generator))
    log_ratio = math.log(lo) + (math.log(hi) - math.log(lo)) * rand((n, RRC_TRIES), device, generator)
    aspect = torch.exp(log_ratio)
    cw = torch.round(torch.sqrt(target * aspect))
    ch = torch.round(torch.sqrt(target / aspect))
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = torch.argmax(fits.to(torch.int8), dim=1, keepdim=True)  # index of the first fitting try (0 if none)
    any_fit = fits.any(dim=1)
    bw, bh = cw.gather(1, first).squeeze(1), ch.gather(1, first).squeeze(1)
    # Fallback: the whole frame, narrowed to the ratio range (torchvision's central crop).
    in_ratio = w / h
    if in_ratio < lo:
        fw, fh = float(w), float(round(w / lo))
    elif in_ratio > hi:
        fw, fh = float(round(h * hi)), float(h)
    else:
        fw, fh = float(w), float(h)
    bw = torch.where(any_fit, bw, torch.full_like(bw, fw))
    bh = torch.where(any_fit, bh, torch.full_like(bh, fh))
    u = rand((n, 2), device, generator)
    y0 = torch.where(any_fit, torch.floor(u[:, 0] * (h - bh + 1)), torch.full_like(bh, (h - fh) // 2))
    x0 = torch.where(any_fit, torch.floor(u[:, 1] * (w - bw + 1)), torch.full_like(bw, (w - fw) // 2))
    return torch.stack([x0, y0, x0 + bw, y0 + bh], dim=1)


def hflip(images: Tensor, p: float, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Mirror each image with probability p; returns (images, flipped (B,) bool)."""
    flipped = rand((images.shape[0],), images.device, generator) < p
    return torch.where(flipped.view(-1, 1, 1, 1), images.flip(-1), images), flipped


def solarize(images: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """torchvision `RandomSolarize(threshold=128)` on [0, 1] floats: values >= 128/255 become 1 - x, w.p. p."""
    if p <= 0:
        return images
    chosen = rand((images.shape[0],), images.device, generator) < p
    inverted = torch.where(images >= 128.0 / 255.0, 1.0 - images, images)
    return torch.where(chosen.view(-1, 1, 1, 1), inverted, images)


def make_views(
    frames: Tensor,
    size: tuple[int, int],
    scale: tuple[float, float],
    ratio: tuple[float, float],
    augment: AugmentConfig,
    blur_p: float,
    solarize_p: float,
    generator: torch.Generator | None = None,
) -> Views:
    """One view of each frame (B, 3, H, W) (uint8 or [0, 1] float): crop, flip, colour, blur, solarise, normalise.

    Colour jitter, grayscale, blur sigma and kernel size come from `augment` (kernel ~ `augment.blur_kernel_frac`
    of the view's side, as BYOL's 23 px at 224); `blur_p` and `solarize_p` are the view's own probabilities.
    """
    b, _, h, w = frames.shape
    oh, ow = int(size[0]), int(size[1])
    boxes = random_resized_boxes(b, (h, w), scale, ratio, frames.device, generator, out_aspect=ow / oh)
    crops = crop_and_resize(to_float_image(frames), boxes.view(b, 1, 4), (oh, ow), mode="resized_crop")
    crops, flipped = hflip(crops, augment.hflip_p, generator)
    x = photometric(crops, replace(augment, blur_p=blur_p), generator=generator, normalize=False)
    x = solarize(x, solarize_p, generator)
    return Views(normalize(x), boxes, flipped)


def view_sources(frame_a: Tensor, frame_b: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """The frames the two views are cut from: `frames` = one view per frame of the pair (temporal positives);
    `crops` = both from frame a (the image recipe, as a control)."""
    if mode == "frames":
        return frame_a, frame_b
    if mode == "crops":
        return frame_a, frame_a
    raise ValueError(f"views must be 'frames' or 'crops', got {mode!r}")
