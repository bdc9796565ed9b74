"""The authors' release's way of running one PooDLe step, on our networks (baseline for benchmarks/train_step.py).

Same maths, same networks, same random draws as `PooDLeObjective.forward`; only the execution structure is the
release's (spec 11): fp32 everywhere, no channels_last, no autocast, the dense loss on the whole batch at full
resolution without chunking/recomputation, subcrops cut one by one in a Python loop with
`torchvision.transforms.v2.functional.resized_crop` (host syncs to read the boxes), and the EMA as a
per-parameter Python loop. Benchmark/test code only: src/ keeps a single implementation.

The release calls `resized_crop` with torchvision 0.17's default `antialias=True` (spec 5.4b), and so does
`resized_crop_one`; the default `subcrops.crop_mode=resized_crop` reproduces it to float rounding. The old
`roi_align` mode (`roi_align_one` here) differs at the border of upscaled crops (it blends in the pixel just outside
the box where resize clamps to the edge pixel) and everywhere in shrunk crops (no antialias); see
tests/test_fast_path.py.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import roi_align
from torchvision.transforms.v2 import functional as TF

from poodle.data.augment import photometric, sample_dense_geometry
from poodle.data.subcrops import SubcropBoxes, flow_aware_subcrops, pair_sources
from poodle.model import PooDLeNetworks
from poodle.objective import PairBatch, PooDLeObjective
from poodle.objective.dense import dense_loss, dense_target_and_mask, online_full_resolution
from poodle.objective.pooled import pooled_loss


@torch.no_grad()
def reference_ema(networks: PooDLeNetworks, tau: float) -> None:
    """The release's EMA: xi = xi * tau + theta * (1 - tau), one Python iteration per parameter.

    BN buffers are copied from the online modules, as `PooDLeNetworks.update_target` does.
    """
    for name, target in networks.target.items():
        online = getattr(networks, name)
        for pt, po in zip(target.parameters(), online.parameters(), strict=True):
            pt.data = pt.data * tau + po.data * (1.0 - tau)
        for bt, bo in zip(target.buffers(), online.buffers(), strict=True):
            bt.copy_(bo)


def resized_crop_one(image: Tensor, box: list[float], size: int) -> Tensor:
    """One crop as the release cuts it: integer box (x1, y1, x2, y2) -> crop (zero padding past the image) ->
    bilinear resize, antialiased when shrinking (torchvision >= 0.17's default)."""
    x1, y1, x2, y2 = (int(v) for v in box)
    return TF.resized_crop(image, top=y1, left=x1, height=y2 - y1, width=x2 - x1, size=[size, size], antialias=True)


def roi_align_one(image: Tensor, box: list[float], size: int) -> Tensor:
    """One crop through roi_align: the same sampling as the batched ``crop_mode=roi_align`` path."""
    rois = torch.tensor([[0.0, *box]], dtype=torch.float32, device=image.device)
    return roi_align(image[None].float(), rois, (size, size), 1.0, 1, True)[0]


def loop_crops(
    images: Tensor, boxes: SubcropBoxes, size: int, paired_index: Tensor, crop_one=resized_crop_one
) -> tuple[Tensor, Tensor]:
    """(B*K) online and (B*K) target crops, cut one at a time (boxes read back to the host, as the release)."""
    b, k = boxes.source_is_pair.shape
    source = pair_sources(boxes.source_is_pair, paired_index).tolist()
    online_boxes, target_boxes = boxes.online.tolist(), boxes.target.tolist()
    online, target = [], []
    for i in range(b):
        for j in range(k):
            online.append(crop_one(images[i], online_boxes[i][j], size))
            target.append(crop_one(images[source[i][j]], target_boxes[i][j], size))
    return torch.stack(online), torch.stack(target)


def reference_forward(
    objective: PooDLeObjective, batch: PairBatch, generator: torch.Generator | None = None, crop_one=resized_crop_one
) -> dict[str, Tensor]:
    """`PooDLeObjective.forward` executed the release's way (fp32, unchunked dense loss, per-crop loop).

    Draws from `generator` in the same order as `PooDLeObjective.forward`, so with equal seeds both see the
    same augmentations and boxes.
    """
    cfg, nets = objective.cfg, objective.networks
    n = batch.frame_a.shape[0]
    size = tuple(batch.frame_a.shape[-2:])
    flow = torch.cat([batch.flow_ab, batch.flow_ba]).float()
    flow_back = torch.cat([batch.flow_ba, batch.flow_ab]).float()
    images = photometric(torch.cat([batch.frame_a, batch.frame_b]), cfg.augment, generator=generator)
    out: dict[str, Tensor] = {}
    total = images.new_zeros(())
    if cfg.objective.dense:
        online_geo = sample_dense_geometry(2 * n, size, cfg.augment, images.device, generator)
        target_geo = sample_dense_geometry(2 * n, size, cfg.augment, images.device, generator)
        with torch.no_grad():
            target_map = nets.target_dense(target_geo.apply(images.roll(n, dims=0)))
        online_map = nets.online_dense(online_geo.apply(images))
        with torch.no_grad():
            target_full, mask = dense_target_and_mask(
                target_map, flow, flow_back, target_geo, online_geo,
                cfg.objective.occlusion_alpha1, cfg.objective.occlusion_alpha2, cfg.objective.target_order,
            )  # fmt: skip
        out["dense"] = dense_loss(online_full_resolution(online_map, online_geo, size), target_full, mask)
        total = total + cfg.objective.dense_weight * out["dense"]
    if cfg.objective.pooled:
        boxes = flow_aware_subcrops(flow, cfg.subcrops, generator=generator)
        paired_index = (torch.arange(2 * n, device=flow.device) + n) % (2 * n)
        online_crops, target_crops = loop_crops(images, boxes, cfg.subcrops.size, paired_index, crop_one)
        with torch.no_grad():
            target_vec = nets.target_pooled(target_crops)
        out["pooled"] = pooled_loss(nets.online_pooled(online_crops), target_vec)
        total = total + cfg.objective.pooled_weight * out["pooled"]
    out["loss"] = total
    return out
