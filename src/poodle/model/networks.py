"""Online and EMA-target networks of PooDLe (spec 2.2-2.5).

Online (theta): encoder -> SDM -> dense projector -> dense predictor (dense branch, stride 8)
                encoder -> global average of layer4 -> pooled projector -> pooled predictor (subcrops)
Target (xi):    EMA copies of encoder, SDM, dense projector and pooled projector; no predictors.

The target lives under `self.target` so that `.to()`, `state_dict()` and checkpoints carry it; its parameters
have `requires_grad=False`, so `[p for p in net.parameters() if p.requires_grad]` (or `online_parameters()`)
is exactly what the optimiser should see.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from poodle.config import ModelConfig
from poodle.model.batchnorm import running_stats_frozen
from poodle.model.decoder import SpatialDecoder
from poodle.model.encoder import ResNetEncoder
from poodle.model.heads import ConvMLP

# Online modules that have an EMA copy in the target (predictors never do).
TARGET_MODULES = ("encoder", "decoder", "dense_projector", "pooled_projector")


class PooDLeNetworks(nn.Module):
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

        # Target = exact copy at init (spec 2.5), frozen for autograd; updated only by update_target.
        copied = [name for name in TARGET_MODULES if getattr(self, name) is not None]
        self.target = nn.ModuleDict({name: copy.deepcopy(getattr(self, name)) for name in copied})
        self.target.requires_grad_(False)
        self._ema_lists: tuple[list[torch.Tensor], ...] | None = None

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

    # ------------------------------------------------------------------------------------------- EMA

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        """xi <- tau * xi + (1 - tau) * theta for all target parameters; BN buffers are copied from online.

        One fused `_foreach_lerp_` over all parameters (instead of the release's per-parameter Python loop,
        spec 11 item 5): lerp(xi, theta, 1 - tau) = xi + (1 - tau) * (theta - xi).
        """
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"EMA momentum must be in [0, 1], got {tau}")
        target_params, online_params, target_bufs, online_bufs = self._ema_tensors()
        if tau < 1.0:
            torch._foreach_lerp_(target_params, online_params, 1.0 - tau)
        if target_bufs:
            torch._foreach_copy_(target_bufs, online_bufs)

    def _ema_tensors(self) -> tuple[list[torch.Tensor], ...]:
        """(target params, online params, target buffers, online buffers), built once and cached.

        The cache is dropped by `_apply` (`.to()`, `.cuda()`, `.half()` replace buffer tensors), by
        `load_state_dict` and by assigning a module attribute; call `reset_ema_cache()` after replacing
        modules deeper down by hand (e.g. `convert_sync_batchnorm` on a submodule).
        """
        if self._ema_lists is None:
            lists: tuple[list[torch.Tensor], ...] = ([], [], [], [])
            for name, target_module in self.target.items():
                online_module = getattr(self, name)
                for tgt_iter, src_iter, tgt_list, src_list in (
                    (target_module.named_parameters(), online_module.named_parameters(), lists[0], lists[1]),
                    (target_module.named_buffers(), online_module.named_buffers(), lists[2], lists[3]),
                ):
                    tgt_named, src_named = dict(tgt_iter), dict(src_iter)
                    if tgt_named.keys() != src_named.keys():
                        raise RuntimeError(f"target and online {name} have different structures")
                    for key, tensor in tgt_named.items():
                        tgt_list.append(tensor)
                        src_list.append(src_named[key])
            self._ema_lists = lists
        return self._ema_lists

    def reset_ema_cache(self) -> None:
        self._ema_lists = None

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, nn.Module):  # a replaced online/target module invalidates the cached lists
            self.__dict__["_ema_lists"] = None
        super().__setattr__(name, value)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> PooDLeNetworks:
        self._ema_lists = None
        return super()._apply(fn, *args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        self._ema_lists = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def train(self, mode: bool = True) -> PooDLeNetworks:
        """Online modules follow `mode`; the target always stays in train mode (BYOL: batch-statistics BN).

        Its running buffers are never used in train mode and are overwritten from the online network by every
        `update_target`, so keeping it in train mode also during `eval()` costs nothing.
        """
        super().train(mode)
        self.target.train(True)
        return self

    # ------------------------------------------------------------------------------------------- export

    def online_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the optimiser updates (everything except the target)."""
        return (p for name, p in self.named_parameters() if not name.startswith("target."))

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """Online encoder weights with torchvision key names (torchvision loads them, only fc missing)."""
        return self.encoder.torchvision_state_dict()

    def decoder_state_dict(self) -> dict[str, torch.Tensor]:
        """Online SDM weights (empty when there is no decoder: pooled-only model, or the identity SDM)."""
        if self.decoder is None:
            return {}
        return {k: v.detach().clone() for k, v in self.decoder.state_dict().items()}

    def _require(self, branch: str) -> None:
        if not getattr(self, branch):
            raise RuntimeError(f"the {branch} branch is disabled for this model (objective.{branch}=false)")
