"""Dense flow-equivariance loss (spec 4.1, paper Eq. 1).

    L_dense = mean_i  sum_p m_i(p) || q(A1^-1(p_t))(p) - (M o A2^-1)(p_{t+dt})(p) ||^2 / (sum_p m_i(p) + 1e-7)

with both maps L2-normalised over channels after every spatial transform, the stride-8 head outputs upsampled
to the input resolution before warping (to use the full-resolution flow, as FlowE does), and m the product of
the flow in-bounds mask, the forward-backward non-occlusion mask and the affine validity masks of both branches.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from poodle.data.augment import DenseGeometry
from poodle.data.flow import backward_warp, in_bounds_mask, occlusion_mask


def upsample_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def dense_target_and_mask(
    target_map: Tensor,
    flow: Tensor,
    flow_back: Tensor,
    target_geometry: DenseGeometry,
    online_geometry: DenseGeometry,
    alpha1: float = 0.1,
    alpha2: float = 0.5,
    order: str = "unaffine_then_warp",
) -> tuple[Tensor, Tensor]:
    """Bring the target branch's stride-8 map into the online frame's pixels and build the loss mask.

    target_map: (B, C, h, w) target projector output on the transformed paired frame.
    flow: (B, 2, H, W) flow online frame -> paired frame; flow_back: paired -> online (for occlusion).
    Returns (target at full resolution in online-frame coordinates, L2-normalised; mask (B, 1, H, W) float).
    """
    size = flow.shape[-2:]
    full = upsample_to(target_map.float(), size)
    valid_target = target_geometry.valid_mask(size).float()
    if order == "unaffine_then_warp":  # decision 3: the paper's (geometrically right) order
        full = backward_warp(target_geometry.undo(full), flow)
    else:  # the release's order: warp in the augmented frame, then undo the affine
        full = target_geometry.undo(backward_warp(full, flow))
    # The target's valid region lives in paired-frame pixels: bring it along the flow too.
    valid_target_in_online = backward_warp(valid_target, flow) > 0.999
    mask = (
        in_bounds_mask(flow)
        & ~occlusion_mask(flow, flow_back, alpha1, alpha2)
        & valid_target_in_online
        & online_geometry.valid_mask(size)
    )
    return F.normalize(full, dim=1), mask.float()


def dense_loss(online_full: Tensor, target_full: Tensor, mask: Tensor) -> Tensor:
    """Masked mean squared distance of unit vectors (= 2 - 2 cos), per image, then averaged over images."""
    sq = (online_full - target_full).pow(2).sum(dim=1, keepdim=True)
    per_image = (sq * mask).sum(dim=(1, 2, 3)) / (mask.sum(dim=(1, 2, 3)) + 1e-7)
    return per_image.mean()


def online_full_resolution(online_map: Tensor, online_geometry: DenseGeometry, size: tuple[int, int]) -> Tensor:
    """Online predictor output -> full resolution -> undo the online affine/flip -> L2-normalise (fp32)."""
    full = upsample_to(online_map.float(), size)
    return F.normalize(online_geometry.undo(full), dim=1)
