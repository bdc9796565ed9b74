"""Dense flow-equivariance loss (spec 4.1, paper Eq. 1).

    L_dense = mean_i  sum_p m_i(p) || q(A1^-1(p_t))(p) - (M o A2^-1)(p_{t+dt})(p) ||^2 / (sum_p m_i(p) + 1e-7)

with both maps L2-normalised over channels after every spatial transform, the stride-8 head outputs upsampled
to the input resolution before warping (to use the full-resolution flow, as FlowE does), and m the product of
the flow in-bounds mask, the forward-backward non-occlusion mask and the affine validity masks of both branches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

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


def dense_loss_per_image(online_full: Tensor, target_full: Tensor, mask: Tensor) -> Tensor:
    """(B,) masked mean squared distance of unit vectors (= 2 - 2 cos) per image."""
    sq = (online_full - target_full).pow(2).sum(dim=1, keepdim=True)
    return (sq * mask).sum(dim=(1, 2, 3)) / (mask.sum(dim=(1, 2, 3)) + 1e-7)


def dense_loss(online_full: Tensor, target_full: Tensor, mask: Tensor) -> Tensor:
    """L_dense: the per-image masked mean, averaged over images."""
    return dense_loss_per_image(online_full, target_full, mask).mean()


def online_full_resolution(online_map: Tensor, online_geometry: DenseGeometry, size: tuple[int, int]) -> Tensor:
    """Online predictor output -> full resolution -> undo the online affine/flip -> L2-normalise (fp32)."""
    full = upsample_to(online_map.float(), size)
    return F.normalize(online_geometry.undo(full), dim=1)


def _online_per_image_loss(online_map: Tensor, online_geometry: DenseGeometry, target_full: Tensor, mask: Tensor):
    online_full = online_full_resolution(online_map, online_geometry, tuple(target_full.shape[-2:]))
    return dense_loss_per_image(online_full, target_full, mask)


def chunked_dense_loss(
    online_map: Tensor,
    target_map: Tensor,
    flow: Tensor,
    flow_back: Tensor,
    online_geometry: DenseGeometry,
    target_geometry: DenseGeometry,
    alpha1: float = 0.1,
    alpha2: float = 0.5,
    order: str = "unaffine_then_warp",
    chunk: int = 2,
) -> tuple[Tensor, Tensor]:
    """L_dense computed `chunk` images at a time, with the full-resolution online part recomputed in backward.

    The loss lives at the input resolution: at 512 x 1024 every (2N, 256, H, W) fp32 intermediate is 2 GiB at
    N = 2, and autograd would keep several of them (upsampled, un-affined, normalised, difference) for backward.
    Here only the stride-8 online map is saved (`torch.utils.checkpoint`), and the target side, which needs no
    gradient, is materialised for one chunk at a time. The loop runs over ceil(2N / chunk) fixed-size chunks,
    not over samples, and reads nothing back to the host. Returns (L_dense, mean mask fraction).
    `chunk <= 0` computes the whole batch at once (same value).
    """
    b = online_map.shape[0]
    step = b if chunk <= 0 else chunk
    losses, fractions = [], []
    for start in range(0, b, step):
        rows = slice(start, start + step)
        with torch.no_grad():
            target_full, mask = dense_target_and_mask(
                target_map[rows], flow[rows], flow_back[rows], target_geometry.rows(rows),
                online_geometry.rows(rows), alpha1, alpha2, order,
            )  # fmt: skip
        losses.append(
            checkpoint(
                _online_per_image_loss,
                online_map[rows],
                online_geometry.rows(rows),
                target_full,
                mask,
                use_reentrant=False,
            )  # fmt: skip
        )
        fractions.append(mask.mean(dim=(1, 2, 3)))
    return torch.cat(losses).mean(), torch.cat(fractions).mean()
