"""PooDLeObjective: one forward pass of the PooDLe objective on a batch of frame pairs.

This is the whole method as a module, independent of any training loop: it owns the networks (online, predictor
heads and EMA target), applies the batched on-device augmentations, and returns the losses. The engine wraps it
with the optimiser, schedules, EMA updates (`networks.update_target(tau)` before each forward), DDP and logging.

Both temporal orderings are in the same batch: for N pairs (a, b) the online branch sees
[a; b] and the target branch [b; a], with flows [a->b; b->a].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from poodle.config import Config
from poodle.data.augment import photometric, sample_dense_geometry
from poodle.data.subcrops import crop_pairs, flow_aware_subcrops
from poodle.model import PooDLeNetworks
from poodle.objective.base import Method, feature_std
from poodle.objective.dense import chunked_dense_loss, dense_loss_options
from poodle.objective.pooled import pooled_loss


@dataclass
class PairBatch:
    """N frame pairs of the same (H, W) global crop, un-augmented, on the training device.

    frames in [0, 1] float or uint8 (N, 3, H, W); flows in pixels (N, 2, H, W), channel 0 = dx, 1 = dy.
    """

    frame_a: Tensor
    frame_b: Tensor
    flow_ab: Tensor | None = None  # None until a flow estimator fills it in (the engine does)
    flow_ba: Tensor | None = None

    def to(self, device: torch.device | str, non_blocking: bool = True) -> PairBatch:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return PairBatch(move(self.frame_a), move(self.frame_b), move(self.flow_ab), move(self.flow_ba))


class PooDLeObjective(Method):
    """PooDLe (and, with `objective.pooled=false` and the FlowE switches, FlowE as the release trains it)."""

    name = "poodle"
    needs_flow = True

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.networks = PooDLeNetworks(cfg.model, dense=cfg.objective.dense, pooled=cfg.objective.pooled)

    def forward(self, batch: PairBatch, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        cfg, nets = self.cfg, self.networks
        n = batch.frame_a.shape[0]
        size = tuple(batch.frame_a.shape[-2:])
        flow = torch.cat([batch.flow_ab, batch.flow_ba]).float()
        flow_back = torch.cat([batch.flow_ba, batch.flow_ab]).float()
        autocast = self._networks_precision(flow.device)

        # Photometric augmentation, independently per frame; both losses see the same colours.
        # Online row b is paired with row (b + N) mod 2N: online [a; b], target [b; a].
        online_images = photometric(torch.cat([batch.frame_a, batch.frame_b]), cfg.augment, generator=generator)
        if self.cfg.run.channels_last and flow.device.type == "cuda":
            online_images = online_images.contiguous(memory_format=torch.channels_last)

        out: dict[str, Tensor] = {}
        total = online_images.new_zeros(())
        if cfg.objective.dense:
            online_geo = sample_dense_geometry(2 * n, size, cfg.augment, online_images.device, generator)
            target_geo = sample_dense_geometry(2 * n, size, cfg.augment, online_images.device, generator)
            target_input = target_geo.apply(online_images.roll(n, dims=0))
            online_input = online_geo.apply(online_images)
            with torch.no_grad(), autocast:
                target_map = nets.target_dense(target_input)
            with autocast:
                online_map = nets.online_dense(online_input)
            out["dense"], out["mask_fraction"] = chunked_dense_loss(
                online_map, target_map, flow, flow_back, online_geo, target_geo, **dense_loss_options(cfg.objective)
            )  # fmt: skip
            out["dense_std"] = feature_std(online_map)
            total = total + cfg.objective.dense_weight * out["dense"]
        if cfg.objective.pooled:
            boxes = flow_aware_subcrops(flow, cfg.subcrops, generator=generator)
            # Target crops come from the paired frame, or from the online frame itself where the flow left the
            # image (the same-frame fallback): one batched call, no Python loop, no host sync.
            paired_index = (torch.arange(2 * n, device=flow.device) + n) % (2 * n)
            online_crops, target_crops = crop_pairs(
                online_images, boxes, cfg.subcrops.size, paired_index=paired_index, mode=cfg.subcrops.crop_mode
            )
            # Subcrops leave the encoder's BN running statistics as the full-frame pass made them (the readout
            # normalises full frames with them); a pooled-only model has no frame pass, so its subcrops update them.
            update_bn = cfg.objective.bn_stats_from_subcrops or not cfg.objective.dense
            with torch.no_grad(), autocast:
                target_vec = nets.target_pooled(target_crops, update_bn_stats=update_bn)
            with autocast:
                online_vec = nets.online_pooled(online_crops, update_bn_stats=update_bn)
            out["pooled"] = pooled_loss(online_vec, target_vec)
            out["pooled_std"] = feature_std(online_vec)
            out["subcrop_fallback_fraction"] = (~boxes.source_is_pair).float().mean()
            total = total + cfg.objective.pooled_weight * out["pooled"]
        out["loss"] = total
        return out
