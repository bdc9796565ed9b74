"""Optical-flow geometry: warping, validity/occlusion masks and flow under crop / resize / flip.

Conventions (used by every module of poodle):

* A flow field is a float tensor (B, 2, H, W). Channel 0 is dx (pixels, positive = right), channel 1 is dy
  (pixels, positive = down).
* Pixel centres sit at integer coordinates: pixel (y, x) has its centre at (y, x), x in 0..W-1, and covers
  [x - 0.5, x + 0.5). This is the convention of ``grid_sample(align_corners=False)`` and of
  ``F.interpolate(align_corners=False)``: a normalised coordinate is ``(2 x + 1) / W - 1``.
* F_{a->b}(p) says that the content at p in frame a is at p + F(p) in frame b. Backward warping
  ``backward_warp(x_b, F_{a->b})`` therefore brings frame b into frame a: out(p) = x_b(p + F(p)).

The authors' release normalised sampling coordinates with (W - 1) but sampled with ``align_corners=False``,
which shifts every warped value by up to half a pixel (a known defect of the release). Here the normalisation and
``align_corners`` agree, so warping by an integer flow is an exact shift; ``backward_warp(..., convention="release")``
reproduces the release's formula (``objective.warp_convention=release``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "WARP_CONVENTIONS",
    "absolute_occlusion_mask",
    "backward_warp",
    "crop_flow",
    "flow_to_rgb",
    "hflip_flow",
    "in_bounds_mask",
    "occlusion_mask",
    "pixel_grid",
    "resize_flow",
]

# "exact": pixel-centre sampling. "release": the release's feature warp, coordinates normalised by
# (W - 1) but sampled with align_corners=False.
WARP_CONVENTIONS = ("exact", "release")


def _check_flow(flow: Tensor) -> None:
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow must have shape (B, 2, H, W), got {tuple(flow.shape)}")


def pixel_grid(h: int, w: int, device: torch.device | str | None = None) -> Tensor:
    """(1, 2, h, w) float32 pixel-centre coordinates: channel 0 = x (0..w-1), channel 1 = y (0..h-1)."""
    ys = torch.arange(h, device=device, dtype=torch.float32)
    xs = torch.arange(w, device=device, dtype=torch.float32)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy)).unsqueeze(0)


def backward_warp(
    x: Tensor, flow: Tensor, mode: str = "bilinear", padding_mode: str = "zeros", convention: str = "exact"
) -> Tensor:
    """out(p) = x(p + flow(p)), sampled with ``grid_sample`` under the pixel-centre convention.

    ``x`` is (B, C, H, W) with any C and must have the flow's resolution (resize the flow with
    :func:`resize_flow` or the map first). Sampling runs in float32 (normalised coordinates in bf16 would be off
    by several pixels at 1024 px); the result has ``x``'s dtype.

    ``convention="release"`` reproduces the release's feature warp: the target point q = p + flow(p) is
    normalised as 2 q / (W - 1) - 1 but sampled with ``align_corners=False``, so it actually reads x at
    q W / (W - 1) - 0.5 (and likewise in y): a magnification by W / (W - 1) about the image centre, off by
    q / (W - 1) - 0.5 pixels, i.e. -0.5 px at the left edge, 0 at the centre, +0.5 px at the right edge. The
    outermost rows and columns then blend half a pixel of zero padding in.
    """
    _check_flow(flow)
    if x.dim() != 4:
        raise ValueError(f"x must have shape (B, C, H, W), got {tuple(x.shape)}")
    if x.shape[-2:] != flow.shape[-2:] or x.shape[0] != flow.shape[0]:
        raise ValueError(
            f"backward_warp: x {tuple(x.shape)} and flow {tuple(flow.shape)} must share batch size and (H, W); "
            "resize one of them first (resize_flow scales the vectors too)"
        )
    if convention not in WARP_CONVENTIONS:
        raise ValueError(f"warp convention must be one of {WARP_CONVENTIONS}, got {convention!r}")
    h, w = flow.shape[-2:]
    pos = pixel_grid(h, w, flow.device) + flow.float()  # (B, 2, H, W) sampling positions in pixels
    if convention == "exact":  # align_corners=False: pixel centre x maps to (2x + 1) / W - 1.
        gx = (2.0 * pos[:, 0] + 1.0) / w - 1.0
        gy = (2.0 * pos[:, 1] + 1.0) / h - 1.0
    else:  # the release's (W - 1) normalisation, still sampled with align_corners=False (max(.., 1) as it does)
        gx = 2.0 * pos[:, 0] / max(w - 1, 1) - 1.0
        gy = 2.0 * pos[:, 1] / max(h - 1, 1) - 1.0
    grid = torch.stack((gx, gy), dim=-1)
    out = F.grid_sample(x.float(), grid, mode=mode, padding_mode=padding_mode, align_corners=False)
    return out.to(x.dtype)


def in_bounds_mask(flow: Tensor) -> Tensor:
    """(B, 1, H, W) bool: p + F(p) lies in [0, W-1] x [0, H-1].

    The bound is the outermost pixel centres, so a bilinear sample at an in-bounds point is an interpolation of
    real pixels only (no zero padding blended in).
    """
    _check_flow(flow)
    h, w = flow.shape[-2:]
    pos = pixel_grid(h, w, flow.device) + flow.float()
    x, y = pos[:, 0:1], pos[:, 1:2]
    return (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)


def occlusion_mask(flow_fw: Tensor, flow_bw: Tensor, alpha1: float = 0.1, alpha2: float = 0.5) -> Tensor:
    """(B, 1, H, W) bool, True = occluded, by forward-backward consistency (DDFlow).

    F_b'(p) = flow_bw(p + flow_fw(p)) (bilinear, zero padding); p is occluded iff
    |F + F_b'|^2 > alpha1 (|F|^2 + |F_b'|^2) + alpha2. Flows are in pixels of the resolution they are given at.
    """
    _check_flow(flow_fw)
    _check_flow(flow_bw)
    fw = flow_fw.float()
    bw_at = backward_warp(flow_bw.float(), fw)
    lhs = (fw + bw_at).square().sum(1, keepdim=True)
    rhs = alpha1 * (fw.square().sum(1, keepdim=True) + bw_at.square().sum(1, keepdim=True)) + alpha2
    return lhs > rhs


def absolute_occlusion_mask(flow_fw: Tensor, flow_bw: Tensor, threshold_px: float = 3.54) -> Tensor:
    """(B, 1, H, W) bool, True = occluded, by the absolute forward-backward error of the release's FlowE.

    p is occluded iff ||F(p) + F_b(p + F(p))|| > threshold_px (Euclidean norm in pixels; 3.54 = 10 / sqrt(8) in the
    release's config). F_b is sampled exactly at p + F(p) (bilinear, zero padding: the release's ``align_corners=True``
    sampler with its matching (W - 1) normalisation), so this test does not depend on the warp convention. Unlike
    DDFlow's test (:func:`occlusion_mask`) the tolerance does not grow with the flow's magnitude, and a point that
    leaves the frame by less than the threshold (zero-padded F_b) is not occluded.
    """
    _check_flow(flow_fw)
    _check_flow(flow_bw)
    fw = flow_fw.float()
    err = torch.linalg.vector_norm(fw + backward_warp(flow_bw.float(), fw), dim=1, keepdim=True)
    return err > threshold_px


def resize_flow(flow: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    """Resample a flow field to ``size`` = (H', W') and scale its vectors by W'/W (dx) and H'/H (dy).

    Under the pixel-centre convention a point x maps to (x + 0.5) W'/W - 0.5, so displacements scale exactly by
    the size ratio.
    """
    _check_flow(flow)
    h, w = flow.shape[-2:]
    nh, nw = int(size[0]), int(size[1])
    if (nh, nw) == (h, w):
        return flow
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    out = F.interpolate(flow, size=(nh, nw), mode=mode, **kwargs)
    return torch.cat((out[:, 0:1] * (nw / w), out[:, 1:2] * (nh / h)), dim=1)


def crop_flow(flow: Tensor, top: int, left: int, h: int, w: int) -> Tensor:
    """Flow of a crop taken at the same place in both frames: a slice; vectors are unchanged."""
    _check_flow(flow)
    return flow[:, :, top : top + h, left : left + w]


def hflip_flow(flow: Tensor) -> Tensor:
    """Flow between two horizontally mirrored frames: mirror the field and negate dx."""
    _check_flow(flow)
    out = flow.flip(-1)
    return torch.cat((-out[:, 0:1], out[:, 1:2]), dim=1)


def flow_to_rgb(flow: Tensor) -> Tensor:
    """uint8 (B, 3, H, W) colour-wheel visualisation (torchvision's ``flow_to_image``); accepts (2, H, W) too."""
    from torchvision.utils import flow_to_image

    return flow_to_image(flow.float())
