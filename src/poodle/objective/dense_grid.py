"""Composed sampling grids for the dense loss: each full-resolution pixel reads the stride-8 map once.

The sequential dense loss (`objective.dense_resample=sequential`) upsamples a stride-8 map x8 to the frame
(bilinear, ``align_corners=False``), undoes the branch's flip/affine on that (C, H, W) map, and, for the target,
warps it with the flow: two or three full-resolution resamplings of a 256-channel tensor. Each of those steps is
a change of coordinates followed by bilinear interpolation, and the upsampling is the identity in
``grid_sample``'s normalised coordinates (both use the pixel-centre convention). The composed path
(`objective.dense_resample=composed`) chains the coordinate maps on 2-channel grids and samples the stride-8 map
once (`sample_stride8`).

Where the two agree (see docs/method.md, "Dense"): bilinear interpolation reproduces exactly the functions
a + bx + cy + dxy on an axis-aligned pixel square. The upsampled map is such a function inside each stride-8
cell, so with flip and translation-only geometry (the flow, no affine) an interpolation of it between four
full-resolution pixel centres that all lie in one stride-8 cell equals one bilinear read of the stride-8 map:
the paths agree to rounding there. They differ (1) where the four pixel centres straddle a stride-8 cell edge
(the upsampled map has a kink there; the sequential path rounds it off, by at most a quarter of the map's
slope change over one full-resolution pixel) and (2) under a rotation, where the upsampled map read in rotated
pixels is no longer bilinear in them (a second-order term of the same size). Zero padding follows the
sequential path: a pixel whose read point, at any stage, lies a full pixel or more outside the frame gets a zero
vector, as in the sequential path; within that last pixel both paths give the edge value's direction once
normalised (a bilinear blend with zeros only rescales it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from poodle.data.augment import DenseGeometry

__all__ = ["online_grid", "sample_stride8", "target_grid"]

# A normalised coordinate this far out is more than one stride-8 pixel outside any map: zero padding reads 0.
_FAR = 4.0


def _normalised_pixel_grid(b: int, h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(B, H, W) normalised x and y of the full-resolution pixel centres: (2x + 1) / W - 1."""
    xs = (2.0 * torch.arange(w, device=device, dtype=torch.float32) + 1.0) / w - 1.0
    ys = (2.0 * torch.arange(h, device=device, dtype=torch.float32) + 1.0) / h - 1.0
    return xs.view(1, 1, w).expand(b, h, w), ys.view(1, h, 1).expand(b, h, w)


def _undo_matrix(geometry: DenseGeometry, flip: bool = True, affine: bool = True) -> Tensor:
    """(B, 2, 2) normalised matrix M of `undo` (out(p) = m(M p)): Flip @ A, or either factor alone."""
    m = geometry.affine.float() if (affine and geometry.use_affine) else None
    if m is None:
        m = torch.eye(2, device=geometry.flip.device).expand(geometry.batch, 2, 2)
    if flip and geometry.use_flip:
        sign = torch.where(geometry.flip, -1.0, 1.0).to(m.dtype).view(-1, 1)
        m = torch.cat((m[:, :1] * sign.unsqueeze(-1), m[:, 1:]), dim=1)  # Flip @ M negates M's x row
    return m


def _apply(m: Tensor, gx: Tensor, gy: Tensor) -> tuple[Tensor, Tensor]:
    """(gx, gy) -> M (gx, gy), elementwise (a batched matmul would count as model FLOPs in the roofline)."""
    m = m.view(-1, 2, 2, 1, 1)
    return m[:, 0, 0] * gx + m[:, 0, 1] * gy, m[:, 1, 0] * gx + m[:, 1, 1] * gy


def _to_pixels(g: Tensor, n: int) -> Tensor:
    """Normalised coordinate -> the pixel position ``grid_sample(align_corners=False)`` reads on an n-pixel axis."""
    return ((g + 1.0) * n - 1.0) / 2.0


def _outside(gx: Tensor, gy: Tensor, h: int, w: int) -> Tensor:
    """Read points a full pixel or more outside the frame: zero padding gives exactly 0 there."""
    x, y = _to_pixels(gx, w), _to_pixels(gy, h)
    return (x <= -1.0) | (x >= w) | (y <= -1.0) | (y >= h)


def _warp_coordinates(px: Tensor, py: Tensor, flow_x: Tensor, flow_y: Tensor, h: int, w: int, convention: str):
    """Normalised coordinates `backward_warp` samples for pixel positions (px, py) moved by the flow."""
    qx, qy = px + flow_x, py + flow_y
    if convention == "exact":
        return (2.0 * qx + 1.0) / w - 1.0, (2.0 * qy + 1.0) / h - 1.0
    if convention == "release":
        return 2.0 * qx / max(w - 1, 1) - 1.0, 2.0 * qy / max(h - 1, 1) - 1.0
    raise ValueError(f"warp convention must be 'exact' or 'release', got {convention!r}")


def _finish(gx: Tensor, gy: Tensor, outside: Tensor) -> Tensor:
    grid = torch.stack((gx, gy), dim=-1)
    return grid.masked_fill(outside.unsqueeze(-1), _FAR)


def online_grid(geometry: DenseGeometry, size: tuple[int, int]) -> Tensor:
    """(B, H, W, 2) grid that reads the online stride-8 map as `undo(upsample(map))` does: M1 n(p)."""
    h, w = size
    gx, gy = _normalised_pixel_grid(geometry.batch, h, w, geometry.flip.device)
    gx, gy = _apply(_undo_matrix(geometry), gx, gy)
    return _finish(gx, gy, _outside(gx, gy, h, w))


def target_grid(
    flow: Tensor, geometry: DenseGeometry, order: str = "unaffine_then_warp", convention: str = "exact"
) -> Tensor:
    """(B, H, W, 2) grid that reads the target stride-8 map as the sequential target transform does.

    unaffine_then_warp: t(p) = up(M2 g(p + F(p))), g the warp's normalisation (`convention`).
    warp_then_unaffine: t(p) = up(Flip g(s + F(s))), s = the pixel position A2 n(p) reads, F(s) the flow
    sampled there (bilinear, as the sequential path's affine resampling interpolates the warped map).
    """
    b, _, h, w = flow.shape
    flow = flow.float()
    gx, gy = _normalised_pixel_grid(b, h, w, flow.device)
    if order == "unaffine_then_warp":
        px, py = _to_pixels(gx, w), _to_pixels(gy, h)  # the pixel centres themselves
        gx, gy = _warp_coordinates(px, py, flow[:, 0], flow[:, 1], h, w, convention)
        outside = _outside(gx, gy, h, w)
        gx, gy = _apply(_undo_matrix(geometry), gx, gy)
        outside |= _outside(gx, gy, h, w)
    elif order == "warp_then_unaffine":
        outside = torch.zeros_like(gx, dtype=torch.bool)
        fx, fy = flow[:, 0], flow[:, 1]
        if geometry.use_affine:
            gx, gy = _apply(_undo_matrix(geometry, flip=False), gx, gy)
            outside = _outside(gx, gy, h, w)
            at = F.grid_sample(flow, torch.stack((gx, gy), -1), mode="bilinear", padding_mode="border",
                               align_corners=False)  # fmt: skip
            fx, fy = at[:, 0], at[:, 1]
        gx, gy = _warp_coordinates(_to_pixels(gx, w), _to_pixels(gy, h), fx, fy, h, w, convention)
        outside |= _outside(gx, gy, h, w)
        gx, gy = _apply(_undo_matrix(geometry, affine=False), gx, gy)
    else:
        raise ValueError(f"order must be 'unaffine_then_warp' or 'warp_then_unaffine', got {order!r}")
    return _finish(gx, gy, outside)


def sample_stride8(maps: Tensor, grid: Tensor) -> Tensor:
    """One bilinear read of the (B, C, h, w) map per grid point, in fp32 (differentiable in `maps`).

    Zero padding: within one stride-8 pixel of the edge it only scales the edge value (the same direction once
    normalised, the same normalised gradient), and `_FAR` points read exactly 0.
    """
    return F.grid_sample(maps.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
