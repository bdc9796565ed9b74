"""Flow-aware subcrop pairs for the pooled loss, batched on the device.

:func:`flow_aware_subcrops` follows the release's algorithm with every draw made for the whole batch, all K
pairs and all tries at once (the release loops in Python over CUDA scalars):

1. Grid: cell side d = round(sqrt(mean(cfg.area)) * min(H, W)); floor(H/d)+1 rows x floor(W/d)+1 columns, the last
   ones partial (= ceil(H/d) x ceil(W/d): when d divides H the release's extra row would be empty, we drop it).
2. K = cfg.num distinct cells per image (uniform with replacement only if K exceeds the number of cells).
3. Per pair: s ~ U[cfg.area]; online (h, w) of area s H W with a log-uniform aspect ratio in cfg.ratio,
   rounded as torchvision's RandomResizedCrop and clipped to the image (RandomResizedCrop would redraw instead).
4. cfg.tries tries at once: centre (i, j) uniform integer in the cell, clamped (``cfg.clamp``):
   ``inside`` (default, a DEPARTURE): so the online box [i - h//2, i - h//2 + h) x [j - w//2, j - w//2 + w) lies
   inside the image; ``release``: only i >= h//2, j >= w//2, so online boxes may run past the bottom/right edge
   into zero padding (a defect of the release). The flow is read at the clamped centre, the true
   box centre, in both modes;
   jitter = U(-1, 1) * cfg.jitter * (H, W); paired centre = round(centre + flow(centre) + jitter), accepted if
   inside the image. The first accepted try wins (argmax over a boolean).
5. No accepted try: same-frame fallback with a fresh centre drawn in the cell, paired centre = that centre, and
   the target crop cut from the online frame (``source_is_pair`` False).
6. Target (h', w'): area ~ U[s, cfg.target_area_max] H W with an independent aspect ratio, centred on the paired
   centre; its corners are clamped to the image (the box may shrink, as in the release).

Boxes are (x1, y1, x2, y2) in pixel-edge coordinates: pixel (y, x) covers [x, x+1) x [y, y+1), so a box covering
pixels left..left+w-1 is (left, ., left + w, .).

:func:`crop_and_resize` resamples every box at once, two ways (``mode``, config ``subcrops.crop_mode``):

- ``resized_crop`` (default): what the release does per box, ``torchvision.transforms.v2.functional.resized_crop(
  img, top, left, h, w, size, BILINEAR, antialias=True)``, to float rounding. Per box, separable weight matrices
  Wy (out_h, H) and Wx (out_w, W) reproduce torch's antialiased bilinear kernel (``_upsample_bilinear2d_aa``)
  restricted to the box: for output i, scale = n / out (n the box side), centre = scale (i + 0.5), support =
  max(scale, 1), taps c in [max(floor(centre - support + 0.5), 0), min(floor(centre + support + 0.5), n)) with
  triangle weights 1 - |c + 0.5 - centre| / support normalised by their sum (for upsampling this is plain bilinear
  clamped at the box edge; for shrinking, a triangle filter as wide as the scale). Taps that fall outside the
  image keep their share of the normaliser but have no column: F.crop's zero padding. Then out = Wy img Wx^T.
  Boxes are rounded to integers (the release's are); a box that misses the image or has no area gives zeros.
- ``roi_align``: one ``torchvision.ops.roi_align(aligned=True, sampling_ratio=1)`` call, one bilinear sample per
  output pixel at x1 + (k + 0.5) (x2 - x1) / size - 0.5. Cheaper, but no antialias when shrinking, and when
  upsampling the outermost samples blend in the pixel just outside the box (resize clamps to the box edge).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import roi_align

from poodle.config import SubcropConfig
from poodle.data.augment import rand

__all__ = [
    "CROP_MODES",
    "SubcropBoxes",
    "crop_and_resize",
    "crop_flops",
    "crop_pairs",
    "flow_aware_subcrops",
    "grid_shape",
    "pair_sources",
    "resize_weights",
]


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
    if cfg.clamp not in ("inside", "release"):
        raise ValueError(f"subcrops.clamp {cfg.clamp!r}: choose inside or release")
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
    # The release's lower clamp; "inside" adds the missing upper one so the online box stays in the image.
    if cfg.clamp == "release":
        ci = torch.maximum(ci, (oh // 2)[..., None])
        cj = torch.maximum(cj, (ow // 2)[..., None])
    else:
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


CROP_MODES = ("resized_crop", "roi_align")


def resize_weights(start: Tensor, length: Tensor, out: int, size: int) -> Tensor:
    """(K, out, size) float32 weights resampling the pixel range [start, start + length) of an axis of ``size``
    pixels to ``out`` samples as torch's antialiased bilinear ``interpolate`` resizes the cut-out range.

    ``start``/``length`` (K,) are integer-valued. Taps outside [0, size) get no column (zero padding, as
    ``F.crop`` pads) but count in the normaliser; a box of length <= 0 gives zero weights.
    """
    n = length.float().clamp_min(0.0)
    scale = n / out
    support = scale.clamp_min(1.0)
    centre = scale[:, None] * (torch.arange(out, device=n.device, dtype=torch.float32) + 0.5)  # (K, out)
    lo = torch.floor(centre - support[:, None] + 0.5).clamp_min(0.0)
    hi = torch.minimum(torch.floor(centre + support[:, None] + 0.5), n[:, None])
    # Tap c sits at c + 0.5 - centre = c - x0 from the sample; its weight is (support - |c - x0|)+, normalised
    # by the sum over the taps in [lo, hi), all of which lie within the support.
    x0 = centre - 0.5
    c = torch.arange(size, device=n.device, dtype=torch.float32) - start.float()[:, None]  # (K, size)
    # The clamp at 0 is the [lo, hi) range except at the box's ends: pixels outside the box get an infinite distance.
    c = torch.where((c >= 0) & (c < n[:, None]), c, torch.inf)
    w = (c[:, None, :] - x0[..., None]).abs_().neg_().add_(support[:, None, None]).clamp_min_(0.0)  # in place: big
    # Where a tap falls outside the image (zero padding) it has no column but counts in the normaliser: there the
    # sum is taken in closed form, count * support - sum |c - x0| over the taps left and right of x0. Elsewhere
    # the row sum, so that a lone tap gets weight exactly 1 as in torch (exact copies keep max-pool ties).
    m = torch.floor(x0)
    last_left = torch.minimum(m, hi - 1.0)
    n_left = (last_left - lo + 1.0).clamp_min(0.0)
    first_right = torch.maximum(m + 1.0, lo)
    n_right = (hi - first_right).clamp_min(0.0)
    dist = n_left * (x0 - (lo + last_left) / 2) + n_right * ((first_right + hi - 1.0) / 2 - x0)
    padded = (start.float()[:, None] + lo < 0) | (start.float()[:, None] + hi > size)
    total = torch.where(padded, (n_left + n_right) * support[:, None] - dist, w.sum(-1))
    return w.div_(torch.where(total > 0, total, 1.0)[..., None])


def _horizontal_first(h: int, w: int, oh: int, ow: int) -> bool:
    # Dense weight matrices, so the first product runs over the whole image: take the order with fewer
    # multiply-adds (horizontal first unless the image is much taller than wide), decided from static shapes.
    return h * w * ow + oh * h * ow <= oh * h * w + oh * w * ow


def crop_flops(crops: int, channels: int, hw: tuple[int, int], size: int | tuple[int, int], mode: str) -> float:
    """Matmul FLOPs (2 x multiply-adds, FlopCounterMode's convention) of cutting ``crops`` crops from images of
    ``hw``: the two weight products of ``resized_crop``; 0 for ``roi_align`` (no matmul)."""
    if mode == "roi_align":
        return 0.0
    (h, w), (oh, ow) = hw, ((size, size) if isinstance(size, int) else size)
    macs = h * w * ow + oh * h * ow if _horizontal_first(h, w, oh, ow) else oh * h * w + oh * w * ow
    return 2.0 * crops * channels * macs


def _resized_crops(images: Tensor, boxes: Tensor, index: Tensor, out_hw: tuple[int, int]) -> Tensor:
    # images (N, C, H, W) float32, boxes (K, 4), index (K,) -> (K, C, out_h, out_w)
    h, w = images.shape[-2:]
    oh, ow = out_hw
    x1, y1, x2, y2 = boxes.round().unbind(-1)
    wy = resize_weights(y1, y2 - y1, oh, h)  # (K, oh, H)
    wx = resize_weights(x1, x2 - x1, ow, w)  # (K, ow, W)
    src = images.index_select(0, index)  # (K, C, H, W)
    if _horizontal_first(h, w, oh, ow):
        tmp = torch.einsum("kchw,kxw->kchx", src, wx)
        return torch.einsum("kyh,kchx->kcyx", wy, tmp)
    tmp = torch.einsum("kyh,kchw->kcyw", wy, src)
    return torch.einsum("kcyw,kxw->kcyx", tmp, wx)


def crop_and_resize(
    images: Tensor,
    boxes: Tensor,
    size: int | tuple[int, int],
    image_index: Tensor | None = None,
    mode: str = "resized_crop",
    sampling_ratio: int = 1,
) -> Tensor:
    """Cut boxes (B, K, 4) (x1, y1, x2, y2, pixel edges) and resize each to ``size``, all in one batched call.

    ``image_index`` (B, K) long picks the image of ``images`` (N, C, H, W) for each box (default: box row b
    from image b). Returns (B*K, C, size, size) in ``images``' dtype (uint8 rounded); sampling is done in float32
    (box coordinates in bf16 would be off by pixels), outside autocast. ``mode``: ``resized_crop`` (torchvision's
    antialiased bilinear ``resized_crop`` of the integer box, zero padding past the image) or ``roi_align``
    (``sampling_ratio`` samples per output pixel and axis); see the module docstring.
    """
    if boxes.dim() != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (B, K, 4), got {tuple(boxes.shape)}")
    if mode not in CROP_MODES:
        raise ValueError(f"crop mode {mode!r}: choose one of {', '.join(CROP_MODES)}")
    b, k = boxes.shape[:2]
    if image_index is None:
        if images.shape[0] != b:
            raise ValueError(f"{b} rows of boxes for {images.shape[0]} images: pass image_index")
        image_index = torch.arange(b, device=boxes.device).view(b, 1).expand(b, k)
    out_hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    with torch.autocast(images.device.type, enabled=False):  # bf16/TF32 weights would miss the 1e-4 match
        if mode == "resized_crop":
            out = _resized_crops(images.float(), boxes.reshape(-1, 4).float(), image_index.reshape(-1), out_hw)
        else:
            rois = torch.cat((image_index.reshape(-1, 1).float(), boxes.reshape(-1, 4).float()), dim=1)
            out = roi_align(
                images.float(), rois, output_size=out_hw, spatial_scale=1.0, sampling_ratio=sampling_ratio,
                aligned=True,
            )  # fmt: skip
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
    mode: str = "resized_crop",
    sampling_ratio: int = 1,
) -> tuple[Tensor, Tensor]:
    """Online and target crops (each (B*K, C, size, size)) in one :func:`crop_and_resize` call.

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
        images, torch.cat((boxes.online, boxes.target), dim=1), size, index, mode=mode, sampling_ratio=sampling_ratio
    )
    k = boxes.num
    crops = crops.view(b, 2 * k, *crops.shape[1:])
    return crops[:, :k].reshape(b * k, *crops.shape[2:]), crops[:, k:].reshape(b * k, *crops.shape[2:])
