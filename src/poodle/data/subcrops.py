"""Flow-aware subcrop pairs for the pooled loss (spec 3.7, decisions 6-9), batched on the device.

:func:`flow_aware_subcrops` follows the release's algorithm with every draw made for the whole batch, all K
pairs and all tries at once (the release loops in Python over CUDA scalars, spec 11 item 4):

1. Grid: cell side d = round(sqrt(mean(cfg.area)) * min(H, W)); floor(H/d)+1 rows x floor(W/d)+1 columns, the last
   ones partial (= ceil(H/d) x ceil(W/d): when d divides H the release's extra row would be empty, we drop it).
2. K = cfg.num distinct cells per image (uniform with replacement only if K exceeds the number of cells).
3. Per pair: s ~ U[cfg.area]; online (h, w) of area s H W with a log-uniform aspect ratio in cfg.ratio,
   rounded as torchvision's RandomResizedCrop and clipped to the image (RandomResizedCrop would redraw instead).
4. cfg.tries tries at once: centre (i, j) uniform integer in the cell, clamped so the online box
   [i - h//2, i - h//2 + h) x [j - w//2, j - w//2 + w) lies inside the image (DEPARTURE: the release clamps only
   i >= h//2, j >= w//2 and lets boxes run past the bottom/right edge into zero padding, a defect listed in spec
   11; clamping the centre before reading the flow keeps the flow read at the true box centre);
   jitter = U(-1, 1) * cfg.jitter * (H, W); paired centre = round(centre + flow(centre) + jitter), accepted if
   inside the image. The first accepted try wins (argmax over a boolean).
5. No accepted try: same-frame fallback with a fresh centre drawn in the cell, paired centre = that centre, and
   the target crop cut from the online frame (``source_is_pair`` False).
6. Target (h', w'): area ~ U[s, cfg.target_area_max] H W with an independent aspect ratio, centred on the paired
   centre; its corners are clamped to the image (the box may shrink, as in the release).

Boxes are (x1, y1, x2, y2) in pixel-edge coordinates: pixel (y, x) covers [x, x+1) x [y, y+1), so a box covering
pixels left..left+w-1 is (left, ., left + w, .). :func:`crop_and_resize` resamples every box in one
``torchvision.ops.roi_align`` call with ``aligned=True``: with ``sampling_ratio=1`` one bilinear sample per output
pixel at (x1 + (k + 0.5) (x2 - x1) / size) - 0.5 in pixel-centre coordinates, which is exactly
``F.interpolate(crop, size, mode="bilinear", align_corners=False)`` of the box (no antialiasing; a larger
sampling_ratio averages several samples per output pixel, a box-filter antialias).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import roi_align

from poodle.config import SubcropConfig
from poodle.data.augment import rand

__all__ = ["SubcropBoxes", "crop_and_resize", "crop_pairs", "flow_aware_subcrops", "grid_shape", "pair_sources"]


@dataclass
class SubcropBoxes:
    """K subcrop pairs per online image; all tensors live on the flow's device."""

    online: Tensor  # (B, K, 4) float x1, y1, x2, y2 in the online frame
    target: Tensor  # (B, K, 4) float, in the paired frame (or the online frame where source_is_pair is False)
    source_is_pair: Tensor  # (B, K) bool
    online_centre: Tensor  # (B, K, 2) long (y, x): centre pixel of the online box, where the flow was read
    paired_centre: Tensor  # (B, K, 2) long (y, x): the point the target box is centred on (before clamping)
    cell: Tensor  # (B, K) long grid cell index (row-major)

    @property
    def num(self) -> int:
        return self.online.shape[1]


def grid_shape(h: int, w: int, area: tuple[float, float]) -> tuple[int, int, int]:
    """(d, rows, cols): cell side d = round(sqrt(mean(area)) min(h, w)), rows = ceil(h / d), cols = ceil(w / d)."""
    d = max(1, round(math.sqrt((area[0] + area[1]) / 2) * min(h, w)))
    return d, -(-h // d), -(-w // d)


def _box_size(area_frac: Tensor, log_ratio: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
    # torchvision RandomResizedCrop.get_params: w = round(sqrt(A r)), h = round(sqrt(A / r)); clip to the image.
    area = area_frac * (h * w)
    ratio = torch.exp(log_ratio)
    bh = torch.round(torch.sqrt(area / ratio)).clamp(1, h).long()
    bw = torch.round(torch.sqrt(area * ratio)).clamp(1, w).long()
    return bh, bw


def flow_aware_subcrops(flow: Tensor, cfg: SubcropConfig, generator: torch.Generator | None = None) -> SubcropBoxes:
    """Sample cfg.num subcrop pairs per image from the flow (B, 2, H, W) online -> paired frame (pixels).

    No host syncs: all shapes depend only on (B, H, W) and the config.
    """
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow must have shape (B, 2, H, W), got {tuple(flow.shape)}")
    b, _, h, w = flow.shape
    dev = flow.device
    k, tries = cfg.num, cfg.tries
    d, rows, cols = grid_shape(h, w, cfg.area)
    n_cells = rows * cols

    # 2. cells: a random permutation per image, first K (distinct); with replacement only if K > cells.
    if k <= n_cells:
        cell = rand((b, n_cells), dev, generator).argsort(dim=1)[:, :k]
    else:
        cell = (rand((b, k), dev, generator) * n_cells).long().clamp_max(n_cells - 1)
    top = (cell // cols) * d
    left = (cell % cols) * d
    cell_h = (top + d).clamp_max(h) - top
    cell_w = (left + d).clamp_max(w) - left

    # 3. online size.
    lo_r, hi_r = math.log(cfg.ratio[0]), math.log(cfg.ratio[1])
    s = cfg.area[0] + (cfg.area[1] - cfg.area[0]) * rand((b, k), dev, generator)
    oh, ow = _box_size(s, lo_r + (hi_r - lo_r) * rand((b, k), dev, generator), h, w)

    # 4. all tries at once, plus one extra centre for the same-frame fallback (index `tries`).
    u = rand((b, k, tries + 1, 2), dev, generator)
    ci = top[..., None] + torch.minimum((u[..., 0] * cell_h[..., None]).long(), cell_h[..., None] - 1)
    cj = left[..., None] + torch.minimum((u[..., 1] * cell_w[..., None]).long(), cell_w[..., None] - 1)
    # Keep the whole online box inside the image (the release's lower clamp, plus the missing upper one).
    ci = ci.clamp(min=(oh // 2)[..., None], max=(h - oh + oh // 2)[..., None])
    cj = cj.clamp(min=(ow // 2)[..., None], max=(w - ow + ow // 2)[..., None])

    ti, tj = ci[..., :tries], cj[..., :tries]
    index = (ti * w + tj).reshape(b, 1, k * tries).expand(b, 2, k * tries)
    vec = flow.reshape(b, 2, h * w).gather(2, index).float().view(b, 2, k, tries)
    jit = rand((b, k, tries, 2), dev, generator) * 2.0 - 1.0
    pi = torch.round(ti + vec[:, 1] + jit[..., 0] * (cfg.jitter * h))
    pj = torch.round(tj + vec[:, 0] + jit[..., 1] * (cfg.jitter * w))
    ok = (pi >= 0) & (pi <= h - 1) & (pj >= 0) & (pj <= w - 1)
    first = ok.to(torch.uint8).argmax(dim=-1, keepdim=True)  # index of the first success (0 if none)
    found = ok.any(dim=-1)

    def pick(t: Tensor) -> Tensor:
        return t.gather(-1, first).squeeze(-1)

    # 5. fallback: fresh centre, paired centre = centre, target from the online frame.
    oi = torch.where(found, pick(ti), ci[..., tries])
    oj = torch.where(found, pick(tj), cj[..., tries])
    qi = torch.where(found, pick(pi).long(), oi)
    qj = torch.where(found, pick(pj).long(), oj)

    # 6. target size: area ~ U[s, target_area_max], independent aspect; centred on (qi, qj), clamped.
    st = s + (cfg.target_area_max - s) * rand((b, k), dev, generator)
    th, tw = _box_size(st, lo_r + (hi_r - lo_r) * rand((b, k), dev, generator), h, w)
    ty1, tx1 = qi - th // 2, qj - tw // 2
    target = torch.stack(
        (tx1.clamp(0, w), ty1.clamp(0, h), (tx1 + tw).clamp(0, w), (ty1 + th).clamp(0, h)), dim=-1
    ).float()
    oy1, ox1 = oi - oh // 2, oj - ow // 2
    online = torch.stack((ox1, oy1, ox1 + ow, oy1 + oh), dim=-1).float()
    return SubcropBoxes(
        online=online,
        target=target,
        source_is_pair=found,
        online_centre=torch.stack((oi, oj), dim=-1),
        paired_centre=torch.stack((qi, qj), dim=-1),
        cell=cell,
    )


def crop_and_resize(
    images: Tensor,
    boxes: Tensor,
    size: int | tuple[int, int],
    image_index: Tensor | None = None,
    sampling_ratio: int = 1,
) -> Tensor:
    """Cut boxes (B, K, 4) (x1, y1, x2, y2, pixel edges) and resize each to ``size`` in one ``roi_align``.

    ``image_index`` (B, K) long picks the image of ``images`` (N, C, H, W) for each box (default: box row b
    from image b). Returns (B*K, C, size, size) in ``images``' dtype; sampling is done in float32 (box
    coordinates in bf16 would be off by pixels). With ``sampling_ratio=1`` it is an exact bilinear resize.
    """
    if boxes.dim() != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (B, K, 4), got {tuple(boxes.shape)}")
    b, k = boxes.shape[:2]
    if image_index is None:
        if images.shape[0] != b:
            raise ValueError(f"{b} rows of boxes for {images.shape[0]} images: pass image_index")
        image_index = torch.arange(b, device=boxes.device).view(b, 1).expand(b, k)
    out_hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    rois = torch.cat((image_index.reshape(-1, 1).float(), boxes.reshape(-1, 4).float()), dim=1)
    out = roi_align(
        images.float(), rois, output_size=out_hw, spatial_scale=1.0, sampling_ratio=sampling_ratio, aligned=True
    )
    if images.is_floating_point():
        return out.to(images.dtype)
    return out.round().clamp(0, 255).to(images.dtype)


def pair_sources(source_is_pair: Tensor, paired_index: Tensor) -> Tensor:
    """(B, K) long index of the image each target crop is cut from: ``paired_index[b]`` where the pair was
    found, else the online image ``b`` itself (same-frame fallback)."""
    b = source_is_pair.shape[0]
    own = torch.arange(b, device=source_is_pair.device).view(b, 1)
    return torch.where(source_is_pair, paired_index.view(b, 1).to(own.dtype), own)


def crop_pairs(
    online_frames: Tensor,
    boxes: SubcropBoxes,
    size: int | tuple[int, int],
    paired_frames: Tensor | None = None,
    paired_index: Tensor | None = None,
    sampling_ratio: int = 1,
) -> tuple[Tensor, Tensor]:
    """Online and target crops (each (B*K, C, size, size)) in one ``roi_align`` call.

    Give either ``paired_frames`` (B, C, H, W) - the paired frame of online image b is paired_frames[b] - or
    ``paired_index`` (B,) when the paired frames are themselves rows of ``online_frames`` (PooDLe's symmetric
    batch [x_t; x_t+dt] pairs row b with row (b + N) mod 2N), which avoids concatenating the frames.
    """
    b = online_frames.shape[0]
    if (paired_frames is None) == (paired_index is None):
        raise ValueError("crop_pairs: give exactly one of paired_frames and paired_index")
    if paired_frames is not None:
        images = torch.cat((online_frames, paired_frames), dim=0)
        paired_index = torch.arange(b, 2 * b, device=boxes.online.device)
    else:
        images = online_frames
    own = torch.arange(b, device=boxes.online.device).view(b, 1).expand_as(boxes.source_is_pair)
    index = torch.cat((own, pair_sources(boxes.source_is_pair, paired_index)), dim=1)
    crops = crop_and_resize(
        images, torch.cat((boxes.online, boxes.target), dim=1), size, index, sampling_ratio=sampling_ratio
    )
    k = boxes.num
    crops = crops.view(b, 2 * k, *crops.shape[1:])
    return crops[:, :k].reshape(b * k, *crops.shape[2:]), crops[:, k:].reshape(b * k, *crops.shape[2:])
