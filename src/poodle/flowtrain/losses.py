"""Unsupervised optical-flow losses of UFlow (Jonschkowski et al., ECCV 2020) and SMURF (Stone et al., CVPR 2021).

Conventions are those of :mod:`poodle.data.flow`: flows (B, 2, H, W) in pixels, F_{a->b}(p) = where the content at
p in frame a is in frame b; images (B, 3, H, W) float in [0, 1].

* :func:`census_loss` - photometric loss on a 7x7 soft census transform (DDFlow's), robust to lighting changes.
* :func:`ssim_loss` - the alternative photometric loss (PooDLe's UFlow port used SSIM).
* :func:`smoothness_loss` - edge-aware first / second-order smoothness at 1/4 resolution.
* :func:`selfsup_loss` - UFlow's self-supervision: a teacher's flow on full frames supervises the flow of a crop.
* :func:`unsupervised_flow_loss` - all of them, over every RAFT update (SMURF's sequence loss).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from poodle.data.flow import backward_warp, in_bounds_mask, occlusion_mask, resize_flow

CENSUS_PATCH = 7
# DDFlow / UFlow constants: census normaliser 0.81, soft-Hamming threshold 0.1, robust penalty (|x| + 0.01)^0.4.
CENSUS_EPS = 0.81
HAMMING_THRESHOLD = 0.1
ROBUST_EPS, ROBUST_Q = 0.01, 0.4
SMOOTHNESS_LEVEL = 2  # 1/4 resolution, as UFlow and SMURF


def rgb_to_gray(img: Tensor) -> Tensor:
    """(B, 3, H, W) -> (B, 1, H, W), ITU-R 601 luma (tf.image.rgb_to_grayscale's weights)."""
    w = img.new_tensor([0.2989, 0.5870, 0.1140]).view(1, 3, 1, 1)
    return (img * w).sum(1, keepdim=True)


def census_transform(img: Tensor, patch: int = CENSUS_PATCH) -> Tensor:
    """(B, patch^2, H, W) soft ternary census of 255 x gray: d / sqrt(0.81 + d^2), d = neighbour - centre.

    Neighbours outside the image read 0 (zero padding); :func:`census_loss` masks that border.
    """
    gray = rgb_to_gray(img) * 255.0
    h, w = gray.shape[-2:]
    r = patch // 2
    padded = F.pad(gray, (r, r, r, r))
    # Shifted views rather than UFlow's identity-kernel convolution: the same values at 1/patch^2 of the work.
    neighbours = torch.cat([padded[..., i : i + h, j : j + w] for i in range(patch) for j in range(patch)], dim=1)
    diff = neighbours - gray
    return diff / torch.sqrt(CENSUS_EPS + diff.square())


def soft_hamming(a: Tensor, b: Tensor, threshold: float = HAMMING_THRESHOLD) -> Tensor:
    """(B, 1, H, W): ~1 per census channel that differs by clearly more than `threshold`, ~0 otherwise."""
    sq = (a - b).square()
    return (sq / (threshold + sq)).sum(1, keepdim=True)


def robust_penalty(x: Tensor) -> Tensor:
    """DDFlow's (|x| + 0.01)^0.4: grows slowly, so a few wrong pixels do not dominate."""
    return (x.abs() + ROBUST_EPS).pow(ROBUST_Q)


def border_mask(shape: tuple[int, ...], margin: int, device: torch.device) -> Tensor:
    """(B, 1, H, W) float: 0 within `margin` pixels of the border (where the census reads padding), else 1."""
    b, _, h, w = shape
    m = torch.zeros((b, 1, h, w), device=device)
    m[:, :, margin : h - margin, margin : w - margin] = 1.0
    return m


def census_loss(img1: Tensor, img2_warped: Tensor, mask: Tensor, patch: int = CENSUS_PATCH,
                census1: Tensor | None = None) -> Tensor:  # fmt: skip
    """Masked mean of the robust soft-Hamming distance between the census transforms of two images.

    `mask` (B, 1, H, W) float, 1 where the photometric comparison is valid (visible, inside the frame); the
    normaliser is the mask's sum, so the loss is the mean over valid pixels (UFlow's census_loss). `census1`:
    img1's transform when already computed (it is the same for every RAFT update)."""
    census1 = census_transform(img1, patch) if census1 is None else census1
    hamming = soft_hamming(census1, census_transform(img2_warped, patch))
    weight = mask * border_mask(mask.shape, patch // 2, mask.device)
    return (robust_penalty(hamming) * weight).sum() / (mask.sum() + 1e-6)


def ssim_loss(img1: Tensor, img2_warped: Tensor, mask: Tensor) -> Tensor:
    """Masked mean of (1 - SSIM) / 2 over 3x3 windows (mask-weighted statistics, as UFlow's weighted_ssim)."""
    c1, c2 = 0.01**2, 0.03**2
    w = mask
    wsum = F.avg_pool2d(w, 3, 1, 1) + 1e-6

    def mean(x: Tensor) -> Tensor:
        return F.avg_pool2d(x * w, 3, 1, 1) / wsum

    mu_x, mu_y = mean(img1), mean(img2_warped)
    var_x = mean(img1.square()) - mu_x.square()
    var_y = mean(img2_warped.square()) - mu_y.square()
    cov = mean(img1 * img2_warped) - mu_x * mu_y
    ssim = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    err = ((1 - ssim) / 2).clamp(0, 1).mean(1, keepdim=True)
    avg_w = wsum  # pixels whose window holds mostly valid pixels count more
    return (err * avg_w * (mask > 0)).sum() / ((avg_w * (mask > 0)).sum() + 1e-6)


def gaussian_blur(img: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur (reflect padding, radius ceil(2.5 sigma)); `sigma` <= 0 returns `img` unchanged."""
    if sigma <= 0:
        return img
    r = max(1, int(math.ceil(2.5 * sigma)))
    x = torch.arange(-r, r + 1, dtype=img.dtype, device=img.device)
    k = torch.exp(-0.5 * (x / sigma).square())
    k = k / k.sum()
    c = img.shape[1]
    out = F.conv2d(F.pad(img, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(out, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def robust_l1(x: Tensor) -> Tensor:
    return (x.square() + 0.001**2).sqrt()


def _grads(x: Tensor, stride: int = 1) -> tuple[Tensor, Tensor]:
    return x[..., :, stride:] - x[..., :, :-stride], x[..., stride:, :] - x[..., :-stride, :]


def smoothness_loss(flow: Tensor, img: Tensor, order: int = 2, edge_constant: float = 150.0,
                    level: int = SMOOTHNESS_LEVEL) -> Tensor:  # fmt: skip
    """UFlow's edge-aware smoothness of `order` 1 or 2, on the flow and image resized to 1 / 2^level.

    Weights exp(-mean_c |edge_constant * image gradient|) let the flow change at image edges; the flow is resized
    with its vectors scaled, so the loss is measured in pixels of that level (as UFlow's pyramid flows are)."""
    h, w = flow.shape[-2:]
    size = (max(2 * order + 1, h >> level), max(2 * order + 1, w >> level))
    flow_l = resize_flow(flow, size) if size != (h, w) else flow
    img_l = F.interpolate(img, size=size, mode="area") if size != (h, w) else img
    stride = order  # second order: the image difference spans the same 3 pixels as the flow's second difference
    img_gx, img_gy = _grads(img_l, stride)
    wx = torch.exp(-(edge_constant * img_gx).abs().mean(1, keepdim=True))
    wy = torch.exp(-(edge_constant * img_gy).abs().mean(1, keepdim=True))
    fx, fy = _grads(flow_l)
    if order == 2:
        fx, _ = _grads(fx)
        _, fy = _grads(fy)
    elif order != 1:
        raise ValueError(f"smoothness order must be 1 or 2, got {order}")
    return ((wx * robust_l1(fx)).mean() + (wy * robust_l1(fy)).mean()) / 2


def swap_directions(flow: Tensor) -> Tensor:
    """(2B, ...) = [a->b; b->a] -> [b->a; a->b]: each direction's partner for the forward-backward check."""
    first, second = flow.chunk(2)
    return torch.cat((second, first))


def valid_photometric_mask(flow: Tensor, flow_reverse: Tensor, alpha1: float, alpha2: float,
                           occlusion: bool) -> Tensor:  # fmt: skip
    """(B, 1, H, W) float, gradient stopped: pixels whose target is inside the frame and, with `occlusion`, that pass
    the forward-backward test (DDFlow / UFlow 'brox': occluded iff |F + B'|^2 > a1 (|F|^2 + |B'|^2) + a2)."""
    with torch.no_grad():
        keep = in_bounds_mask(flow)
        if occlusion:
            keep = keep & ~occlusion_mask(flow.detach(), flow_reverse.detach(), alpha1, alpha2)
    return keep.float()


def fb_consistency(flow: Tensor, flow_reverse: Tensor, sigma: float) -> Tensor:
    """UFlow's Gaussian forward-backward consistency exp(-|F + B'|^2 / (sigma^2 (H^2 + W^2))) times in-frame."""
    h, w = flow.shape[-2:]
    sq = (flow + backward_warp(flow_reverse, flow)).square().sum(1, keepdim=True)
    return torch.exp(-sq / (sigma**2 * (h**2 + w**2))) * in_bounds_mask(flow).float()


def selfsup_crop(x: Tensor, margin: int, is_flow: bool = False) -> Tensor:
    """Cut `margin` pixels from each side and resize back to the full size (flows: vectors rescaled)."""
    h, w = x.shape[-2:]
    crop = x[..., margin : h - margin, margin : w - margin]
    if is_flow:
        return resize_flow(crop, (h, w))
    return F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)


def selfsup_loss(teacher_flow: Tensor, teacher_flow_reverse: Tensor, student_flow: Tensor,
                 student_flow_reverse: Tensor, margin: int, sigma_teacher: float = 0.003,
                 sigma_student: float = 0.03) -> Tensor:  # fmt: skip
    """UFlow's self-supervision: the teacher's flow on the full frames, cropped to the student's view, supervises the
    student's flow on the crop where the teacher is consistent and the student is not (e.g. motion out of the crop).

    mask = teacher consistency (cropped) x (1 - student consistency), gradient stopped; loss = sum(mask * robust
    L1(teacher - student)) / pixels."""
    with torch.no_grad():
        t_mask = selfsup_crop(fb_consistency(teacher_flow, teacher_flow_reverse, sigma_teacher), margin)
        s_mask = 1.0 - fb_consistency(student_flow.detach(), student_flow_reverse.detach(), sigma_student)
        target = selfsup_crop(teacher_flow.detach(), margin, is_flow=True)
        mask = t_mask * s_mask
    return (mask * robust_l1(target - student_flow)).sum() / mask.numel()  # both components summed, as UFlow


def sequence_weights(n: int, decay: float) -> list[float]:
    """SMURF / RAFT: update i of n gets decay^(n - 1 - i); the last gets 1."""
    return [decay ** (n - 1 - i) for i in range(n)]


def unsupervised_flow_loss(img1: Tensor, img2: Tensor, flows: list[Tensor], cfg, occlusion: bool = True,
                           ) -> dict[str, Tensor]:  # fmt: skip
    """Photometric + smoothness loss of every RAFT update, weighted by the sequence weights.

    img1, img2: (2B, 3, H, W) float [0, 1] = the frames each flow starts from / points into ([a; b] and [b; a]);
    flows: the list of (2B, 2, H, W) flows RAFT returns (one per update), [a->b; b->a] each. `cfg` is a
    :class:`poodle.flowtrain.config.FlowLossConfig`. Returns 'loss' and its parts (of the final update) for logging.
    """
    weights = sequence_weights(len(flows), cfg.sequence_decay)
    edges = img1  # the smoothness's edge weights see the sharp frame
    if cfg.photo_blur > 0:
        img1, img2 = gaussian_blur(img1, cfg.photo_blur), gaussian_blur(img2, cfg.photo_blur)
    census1 = census_transform(img1) if cfg.census > 0 else None
    total = img1.new_zeros(())
    parts: dict[str, Tensor] = {}
    for wi, flow in zip(weights, flows):
        flow = flow.float()
        mask = valid_photometric_mask(flow, swap_directions(flow), cfg.occ_alpha1, cfg.occ_alpha2, occlusion)
        warped = backward_warp(img2, flow)
        step: dict[str, Tensor] = {}
        if cfg.census > 0:
            step["census"] = cfg.census * census_loss(img1, warped, mask, census1=census1)
        if cfg.ssim > 0:
            step["ssim"] = cfg.ssim * ssim_loss(img1, warped, mask)
        if cfg.smooth1 > 0:
            step["smooth1"] = cfg.smooth1 * smoothness_loss(flow, edges, 1, cfg.edge_constant)
        if cfg.smooth2 > 0:
            step["smooth2"] = cfg.smooth2 * smoothness_loss(flow, edges, 2, cfg.edge_constant)
        total = total + wi * sum(step.values())
        parts = step
        parts["visible_fraction"] = mask.mean()
    return {"loss": total, **parts}
