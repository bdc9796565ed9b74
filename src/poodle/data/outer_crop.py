"""The global ("outer") crop: resize to canvas * s, then one random crop shared by both frames of a pair.

The release resizes every frame to (floor(1080 s), floor(1920 s)) and takes a random 512 x 1024 crop. We sample the
same geometry but never build the resized frame: the crop box is mapped back to source pixels and only the crop is
resampled (bilinear, OpenCV's half-pixel convention, so the result equals resize-then-crop).

Sources that are not the canvas's shape: the canvas fixes the *area* the frame is resized to, not its shape. A
(Hs, Ws) source is resized by f = s * sqrt(Hc * Wc / (Hs * Ws)), keeping its aspect ratio, so the crop covers
h * w / (Hc * Wc * s^2) of the frame exactly as in the paper for any source size (a 16:9 source gets exactly
(floor(Hc s), floor(Wc s)), the release's resize). If the resized frame would be smaller than the crop on either
side (e.g. a portrait video and a landscape crop), f is raised to the smallest factor at which the crop fits, which
caps the crop's area fraction at what the aspect ratios allow (as a 2:1 crop of a 16:9 frame caps at 0.889).

Heavy downscaling (f < 1/2, e.g. 4K Walking Tours to 0.55 * 1080p) first box-filters the needed source region by an
integer factor (cv2.INTER_AREA) so the bilinear step does not alias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["OuterCrop", "apply_outer_crop", "sample_outer_crop"]

_EPS = 1e-6  # guards floor() against 1079.9999... for exact products


@dataclass(frozen=True)
class OuterCrop:
    """One pair's crop: the frame is resized from `source_hw` to `resized_hw`, then `box` = (top, left, h, w)."""

    scale: float  # s ~ U[scale range]
    source_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    box: tuple[int, int, int, int]

    @property
    def factors(self) -> tuple[float, float]:
        """(fy, fx): resized pixels per source pixel along each axis."""
        return self.resized_hw[0] / self.source_hw[0], self.resized_hw[1] / self.source_hw[1]

    def source_box(self) -> tuple[float, float, float, float]:
        """The crop in source pixel coordinates: (x0, y0, x1, y1), edges (not centres) of the covered area."""
        fy, fx = self.factors
        top, left, h, w = self.box
        return left / fx, top / fy, (left + w) / fx, (top + h) / fy

    def area_fraction(self) -> float:
        return self.box[2] * self.box[3] / (self.resized_hw[0] * self.resized_hw[1])


def resized_size(
    source_hw: tuple[int, int], canvas: tuple[int, int], scale: float, resolution: tuple[int, int]
) -> tuple[int, int]:
    """Size of the source after the canvas-relative resize (see the module docstring), never smaller than the crop."""
    hs, ws = source_hw
    hc, wc = canvas
    h, w = resolution
    f = scale * math.sqrt(hc * wc / (hs * ws))
    f = max(f, h / hs, w / ws)
    return max(h, int(math.floor(hs * f + _EPS))), max(w, int(math.floor(ws * f + _EPS)))


def sample_outer_crop(
    rng: np.random.Generator,
    source_hw: tuple[int, int],
    resolution: tuple[int, int],
    canvas: tuple[int, int],
    scale: tuple[float, float],
) -> OuterCrop:
    """Draw s ~ U[scale] and a uniform crop position (the release's RandomCrop)."""
    s = float(rng.uniform(scale[0], scale[1])) if scale[1] > scale[0] else float(scale[0])
    hr, wr = resized_size(source_hw, canvas, s, resolution)
    h, w = resolution
    top = int(rng.integers(0, hr - h + 1))
    left = int(rng.integers(0, wr - w + 1))
    return OuterCrop(scale=s, source_hw=tuple(source_hw), resized_hw=(hr, wr), box=(top, left, h, w))


def apply_outer_crop(frame: np.ndarray, crop: OuterCrop) -> np.ndarray:
    """Resample `crop` from an (Hs, Ws, C) uint8 frame: equal to cv2.resize(frame, resized) [top:top+h, left:left+w]."""
    if frame.shape[:2] != crop.source_hw:
        raise ValueError(f"frame of size {frame.shape[:2]} given to a crop sampled for {crop.source_hw}")
    fy, fx = crop.factors
    top, left, h, w = crop.box
    k = int(1.0 / max(fx, fy)) if max(fx, fy) < 0.5 else 1
    ox = oy = 0
    if k > 1:
        # Box-filter only the region the crop needs (plus a margin for the bilinear support), aligned to k.
        hs, ws = crop.source_hw
        x0, y0, x1, y1 = crop.source_box()
        ox = max(0, (int(x0) // k - 1) * k)
        oy = max(0, (int(y0) // k - 1) * k)
        ex = min((ws // k) * k, (math.ceil(x1) // k + 2) * k)
        ey = min((hs // k) * k, (math.ceil(y1) // k + 2) * k)
        frame = cv2.resize(frame[oy:ey, ox:ex], ((ex - ox) // k, (ey - oy) // k), interpolation=cv2.INTER_AREA)
    # Output pixel (i, j) samples source (x, y) = ((left + j + 0.5) / fx - 0.5, ...) (half-pixel centres), expressed
    # in the coordinates of the (possibly shrunk) region: u = (x + 0.5) / k - 0.5 - ox / k.
    sx, sy = 1.0 / (fx * k), 1.0 / (fy * k)
    inverse = np.array(
        [
            [sx, 0.0, (left + 0.5) * sx - 0.5 - ox / k],
            [0.0, sy, (top + 0.5) * sy - 0.5 - oy / k],
        ]
    )
    return cv2.warpAffine(
        np.ascontiguousarray(frame),
        inverse,
        (w, h),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )
