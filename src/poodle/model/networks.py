"""Online and EMA-target networks of PooDLe.

Online (theta): encoder -> SDM -> dense projector -> dense predictor (dense branch, stride 8)
                encoder -> global average of layer4 -> pooled projector -> pooled predictor (subcrops)
Target (xi):    EMA copies of encoder, SDM, dense projector and pooled projector; no predictors.

The target lives under `self.target` so that `.to()`, `state_dict()` and checkpoints carry it; its parameters
have `requires_grad=False`, so `[p for p in net.parameters() if p.requires_grad]` (or `online_parameters()`)
is exactly what the optimiser should see.
"""

from __future__ import annotations

import torch

from poodle.config import ModelConfig
from poodle.model.batchnorm import running_stats_frozen
from poodle.model.decoder import SpatialDecoder
from poodle.model.ema import EMANetworks
from poodle.model.encoder import ResNetEncoder
from poodle.model.heads import ConvMLP

# Online modules that have an EMA copy in the target (predictors never do).
TARGET_MODULES = ("encoder", "decoder", "dense_projector", "pooled_projector")


class PooDLeNetworks(EMANetworks):
    """Encoder, SDM and heads for the enabled losses, plus their EMA target copies.

    Modules of a disabled loss are `None` (the SDM belongs to the dense branch only, as in the release, so a
    pooled-only model has no decoder); calling that branch raises.
    """

    def __init__(self, cfg: ModelConfig, dense: bool = True, pooled: bool = True) -> None:
        super().__init__()
        if not (dense or pooled):
            raise ValueError("PooDLeNetworks needs at least one of dense / pooled")
        self.cfg = cfg
        self.dense = dense
        self.pooled = pooled
        self.encoder = ResNetEncoder(cfg.arch, dilated=cfg.dilated, init=cfg.init)
        c4 = self.encoder.channels[-1]
        hidden, out = cfg.proj_hidden_dim, cfg.proj_out_dim
        self.decoder: SpatialDecoder | None = None
        self.dense_projector: ConvMLP | None = None
        self.dense_predictor: ConvMLP | None = None
        self.pooled_projector: ConvMLP | None = None
        self.pooled_predictor: ConvMLP | None = None
        if dense:
            self.decoder = SpatialDecoder(
                self.encoder.channels,
                encoder_stride=self.encoder.strides[-1],
                top_down=cfg.decoder_top_down,
                lateral=cfg.decoder_lateral,
                bottleneck_first=cfg.decoder_bottleneck_first,
                reduction=cfg.decoder_reduction,
            )
            self.dense_projector = ConvMLP(c4, hidden, out, bias=cfg.head_bias)
            self.dense_predictor = ConvMLP(out, hidden, out, bias=cfg.head_bias)
        if pooled:
            self.pooled_projector = ConvMLP(c4, hidden, out, bias=cfg.head_bias)
            self.pooled_predictor = ConvMLP(out, hidden, out, bias=cfg.head_bias)

        # Target = exact copy at init, frozen for autograd; updated only by update_target.
        self._make_target(TARGET_MODULES)

    # ------------------------------------------------------------------------------------------- branches

    def online_dense(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, proj_out_dim, H/8, W/8): encoder -> SDM -> projector -> predictor."""
        self._require("dense")
        z = self.decoder(self.encoder(x))
        return self.dense_predictor(self.dense_projector(z))

    @torch.no_grad()
    def target_dense(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, proj_out_dim, H/8, W/8) from the EMA encoder -> SDM -> projector."""
        self._require("dense")
        t = self.target
        return t["dense_projector"](t["decoder"](t["encoder"](x)))

    def online_pooled(self, crops: torch.Tensor, update_bn_stats: bool = True) -> torch.Tensor:
        """(N, 3, h, w) subcrops -> (N, proj_out_dim): pooled layer4 -> projector -> predictor.

        `update_bn_stats=False`: the encoder's BatchNorm layers use batch statistics as always but leave their
        running statistics alone, so they keep describing full frames (see `poodle.model.batchnorm`). The
        pooled heads' own BatchNorm always updates (only subcrops ever reach it).
        """
        self._require("pooled")
        with running_stats_frozen(self.encoder, enabled=not update_bn_stats):
            pooled = self.encoder.forward_pooled(crops)
        return self.pooled_predictor(self.pooled_projector(pooled))

    @torch.no_grad()
    def target_pooled(self, crops: torch.Tensor, update_bn_stats: bool = True) -> torch.Tensor:
        """(N, 3, h, w) subcrops -> (N, proj_out_dim) from the EMA encoder -> projector."""
        self._require("pooled")
        t = self.target
        with running_stats_frozen(t["encoder"], enabled=not update_bn_stats):
            pooled = t["encoder"].forward_pooled(crops)
        return t["pooled_projector"](pooled)

    def _require(self, branch: str) -> None:
        if not getattr(self, branch):
            raise RuntimeError(f"the {branch} branch is disabled for this model (objective.{branch}=false)")
