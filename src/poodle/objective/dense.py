"""Dense flow-equivariance loss (paper Eq. 1).

    L_dense = mean_i  sum_p m_i(p) || q(A1^-1(p_t))(p) - (M o A2^-1)(p_{t+dt})(p) ||^2 / (sum_p m_i(p) + 1e-7)

with both maps L2-normalised over channels after every spatial transform, the stride-8 head outputs upsampled
to the input resolution before warping (to use the full-resolution flow, as FlowE does), and m the product of
the flow in-bounds mask, the forward-backward non-occlusion mask and the affine validity masks of both branches.

Every difference between this and the release's in-house FlowE loss is a keyword here and an `objective.*` value
(`dense_loss_options`): the occlusion test, the out-of-frame mask, the warp convention, whether the target's
valid mask follows the flow, the denominator's eps, and the target order.

`resample` (`objective.dense_resample`) chooses how the stride-8 maps reach the full resolution: "sequential"
(upsample, then undo the flip/affine, then warp, each a full-resolution resampling) or "composed" (one bilinear
read of the stride-8 map at the composed coordinates, `poodle.objective.dense_grid`). Both use the same mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from poodle.config import ObjectiveConfig
from poodle.data.augment import DenseGeometry
from poodle.data.flow import absolute_occlusion_mask, backward_warp, in_bounds_mask, occlusion_mask
from poodle.objective.dense_fused import composed_per_image_loss
from poodle.objective.dense_grid import online_grid, sample_stride8, target_grid

DENSE_RESAMPLE = ("sequential", "composed")


def upsample_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def dense_loss_options(objective: ObjectiveConfig) -> dict:
    """The keyword arguments of `chunked_dense_loss` that `objective.*` sets, so every caller passes them all."""
    return {
        "alpha1": objective.occlusion_alpha1,
        "alpha2": objective.occlusion_alpha2,
        "order": objective.target_order,
        "occlusion": objective.occlusion,
        "occlusion_threshold_px": objective.occlusion_threshold_px,
        "mask_out_of_frame": objective.mask_out_of_frame,
        "warp_convention": objective.warp_convention,
        "warp_target_valid": objective.warp_target_valid,
        "eps": objective.dense_eps,
        "chunk": objective.dense_chunk,
        "resample": objective.dense_resample,
    }


def _check_resample(resample: str) -> None:
    if resample not in DENSE_RESAMPLE:
        raise ValueError(f"dense resample must be one of {DENSE_RESAMPLE}, got {resample!r}")


def flow_mask(
    flow: Tensor,
    flow_back: Tensor,
    alpha1: float = 0.1,
    alpha2: float = 0.5,
    occlusion: str = "ddflow",
    occlusion_threshold_px: float = 3.54,
    mask_out_of_frame: bool = True,
) -> Tensor:
    """(B, 1, H, W) bool: pixels the flow keeps, i.e. not occluded and (if `mask_out_of_frame`) landing in frame.

    occlusion "ddflow": PooDLe's relative test (`occlusion_mask`); "absolute": the release's FlowE test
    (`absolute_occlusion_mask`, |F + B'| > occlusion_threshold_px).
    """
    if occlusion == "ddflow":
        keep = ~occlusion_mask(flow, flow_back, alpha1, alpha2)
    elif occlusion == "absolute":
        keep = ~absolute_occlusion_mask(flow, flow_back, occlusion_threshold_px)
    else:
        raise ValueError(f"occlusion must be 'ddflow' or 'absolute', got {occlusion!r}")
    return keep & in_bounds_mask(flow) if mask_out_of_frame else keep


def dense_mask(
    flow: Tensor,
    flow_back: Tensor,
    target_geometry: DenseGeometry,
    online_geometry: DenseGeometry,
    alpha1: float = 0.1,
    alpha2: float = 0.5,
    *,
    occlusion: str = "ddflow",
    occlusion_threshold_px: float = 3.54,
    mask_out_of_frame: bool = True,
    warp_convention: str = "exact",
    warp_target_valid: bool = True,
) -> Tensor:
    """(B, 1, H, W) bool loss mask: flow kept (`flow_mask`), target valid, online valid; 1-channel maps only."""
    size = flow.shape[-2:]
    valid_target = target_geometry.valid_mask(size)
    if warp_target_valid:  # the target's valid region lives in paired-frame pixels: bring it along the flow too
        # Border padding: where the flow leaves the frame this mask must not act as a second out-of-frame mask
        # (that is `mask_out_of_frame`'s job); inside the frame both paddings give the same value.
        warped = backward_warp(valid_target.float(), flow, padding_mode="border", convention=warp_convention)
        valid_target = warped > 0.999
    return (
        flow_mask(flow, flow_back, alpha1, alpha2, occlusion, occlusion_threshold_px, mask_out_of_frame)
        & valid_target
        & online_geometry.valid_mask(size)
    )


def dense_target_and_mask(
    target_map: Tensor,
    flow: Tensor,
    flow_back: Tensor,
    target_geometry: DenseGeometry,
    online_geometry: DenseGeometry,
    alpha1: float = 0.1,
    alpha2: float = 0.5,
    order: str = "unaffine_then_warp",
    *,
    occlusion: str = "ddflow",
    occlusion_threshold_px: float = 3.54,
    mask_out_of_frame: bool = True,
    warp_convention: str = "exact",
    warp_target_valid: bool = True,
    resample: str = "sequential",
) -> tuple[Tensor, Tensor]:
    """Bring the target branch's stride-8 map into the online frame's pixels and build the loss mask.

    target_map: (B, C, h, w) target projector output on the transformed paired frame.
    flow: (B, 2, H, W) flow online frame -> paired frame; flow_back: paired -> online (for occlusion).
    Returns (target at full resolution in online-frame coordinates, L2-normalised; mask (B, 1, H, W) float).
    The keyword-only switches are the `objective.*` values of the same names (see `dense_loss_options`).
    """
    _check_resample(resample)
    size = flow.shape[-2:]
    if resample == "composed":
        full = sample_stride8(target_map, target_grid(flow, target_geometry, order, warp_convention))
    else:
        full = upsample_to(target_map.float(), size)

        def warp(x: Tensor) -> Tensor:
            return backward_warp(x, flow, convention=warp_convention)

        if order == "unaffine_then_warp":  # the paper's (geometrically right) order
            full = warp(target_geometry.undo(full))
        else:  # the release's order: unflip, warp in the affine frame, then undo the affine
            # The flip must go before the warp: the flow lives in unflipped pixels, so warping a mirrored map moves
            # every feature the wrong way along x (a known-answer translation test gives loss 1.37 instead of 0).
            full = target_geometry.undo_affine(warp(target_geometry.undo_flip(full)))
    mask = dense_mask(
        flow, flow_back, target_geometry, online_geometry, alpha1, alpha2, occlusion=occlusion,
        occlusion_threshold_px=occlusion_threshold_px, mask_out_of_frame=mask_out_of_frame,
        warp_convention=warp_convention, warp_target_valid=warp_target_valid,
    )  # fmt: skip
    return F.normalize(full, dim=1), mask.float()


def dense_loss_per_image(online_full: Tensor, target_full: Tensor, mask: Tensor, eps: float = 1e-7) -> Tensor:
    """(B,) masked mean squared distance of unit vectors (= 2 - 2 cos) per image; denominator sum(mask) + eps."""
    sq = (online_full - target_full).pow(2).sum(dim=1, keepdim=True)
    return (sq * mask).sum(dim=(1, 2, 3)) / (mask.sum(dim=(1, 2, 3)) + eps)


def dense_loss(online_full: Tensor, target_full: Tensor, mask: Tensor, eps: float = 1e-7) -> Tensor:
    """L_dense: the per-image masked mean, averaged over images."""
    return dense_loss_per_image(online_full, target_full, mask, eps).mean()


def online_full_resolution(
    online_map: Tensor, online_geometry: DenseGeometry, size: tuple[int, int], resample: str = "sequential"
) -> Tensor:
    """Online predictor output -> full resolution -> undo the online affine/flip -> L2-normalise (fp32).

    "composed" does the first two in one bilinear read of the stride-8 map (its gradient through `grid_sample`).
    """
    _check_resample(resample)
    if resample == "composed":
        return F.normalize(sample_stride8(online_map, online_grid(online_geometry, size)), dim=1)
    full = upsample_to(online_map.float(), size)
    return F.normalize(online_geometry.undo(full), dim=1)


def _online_per_image_loss(
    online_map: Tensor,
    online_geometry: DenseGeometry,
    target_full: Tensor,
    mask: Tensor,
    eps: float = 1e-7,
    resample: str = "sequential",
):
    online_full = online_full_resolution(online_map, online_geometry, tuple(target_full.shape[-2:]), resample)
    return dense_loss_per_image(online_full, target_full, mask, eps)


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
    *,
    occlusion: str = "ddflow",
    occlusion_threshold_px: float = 3.54,
    mask_out_of_frame: bool = True,
    warp_convention: str = "exact",
    warp_target_valid: bool = True,
    eps: float = 1e-7,
    resample: str = "sequential",
) -> tuple[Tensor, Tensor]:
    """L_dense computed `chunk` images at a time, with the full-resolution online part recomputed in backward.

    The loss lives at the input resolution: at 512 x 1024 every (2N, 256, H, W) fp32 intermediate is 2 GiB at
    N = 2, and autograd would keep several of them (upsampled, un-affined, normalised, difference) for backward.
    Here only the stride-8 online map is saved (`torch.utils.checkpoint`), and the target side, which needs no
    gradient, is materialised for one chunk at a time. The loop runs over ceil(2N / chunk) fixed-size chunks,
    not over samples, and reads nothing back to the host. Returns (L_dense, mean mask fraction).
    `chunk <= 0` computes the whole batch at once (same value). The keyword-only switches are those of
    `dense_target_and_mask` plus the denominator's `eps`; `dense_loss_options(cfg.objective)` gives them all.
    With `resample="composed"` each branch reads its stride-8 map once per pixel and the loss and its gradient
    are formed in closed form (`dense_fused`): no normalised full-resolution copies, no autograd graph over them.
    """
    _check_resample(resample)
    b = online_map.shape[0]
    step = b if chunk <= 0 else chunk
    losses, fractions = [], []
    for start in range(0, b, step):
        rows = slice(start, start + step)
        if resample == "composed":  # one read per pixel per branch; the loss in closed form (dense_fused)
            with torch.no_grad():
                target_geo, online_geo = target_geometry.rows(rows), online_geometry.rows(rows)
                target = sample_stride8(target_map[rows], target_grid(flow[rows], target_geo, order, warp_convention))
                mask = dense_mask(
                    flow[rows], flow_back[rows], target_geo, online_geo, alpha1, alpha2, occlusion=occlusion,
                    occlusion_threshold_px=occlusion_threshold_px, mask_out_of_frame=mask_out_of_frame,
                    warp_convention=warp_convention, warp_target_valid=warp_target_valid,
                ).float()  # fmt: skip
                grid = online_grid(online_geo, tuple(flow.shape[-2:]))
            losses.append(composed_per_image_loss(online_map[rows], grid, target, mask, eps))
            fractions.append(mask.mean(dim=(1, 2, 3)))
            continue
        with torch.no_grad():
            target_full, mask = dense_target_and_mask(
                target_map[rows], flow[rows], flow_back[rows], target_geometry.rows(rows),
                online_geometry.rows(rows), alpha1, alpha2, order, occlusion=occlusion,
                occlusion_threshold_px=occlusion_threshold_px, mask_out_of_frame=mask_out_of_frame,
                warp_convention=warp_convention, warp_target_valid=warp_target_valid, resample=resample,
            )  # fmt: skip
        losses.append(
            checkpoint(
                _online_per_image_loss,
                online_map[rows],
                online_geometry.rows(rows),
                target_full,
                mask,
                eps,
                resample,
                use_reentrant=False,
            )  # fmt: skip
        )
        fractions.append(mask.mean(dim=(1, 2, 3)))
    return torch.cat(losses).mean(), torch.cat(fractions).mean()
