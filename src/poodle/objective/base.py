"""What every self-supervised method in poodle is: networks with an EMA target, and a loss on a batch of pairs.

A method is one file in `poodle.objective` (PooDLe, BYOL, DINO, DenseCL, PixPro) holding its heads, its views
and its loss, built from the config by `poodle.objective.build_method`. The engine knows only this contract:

- `method(batch, generator) -> dict`: `"loss"` (scalar to minimise) plus detached scalars to log; keys ending in
  `_std` are feature spreads (~1 healthy, ~0 collapsed) that the engine watches for collapse. No host syncs.
- `method.networks`: an `EMANetworks`; its state dict is the checkpoint's `networks`. The online ResNet trunk is
  `networks.encoder` (a `ResNetEncoder`, so export and readouts work for every method) and an optional spatial
  decoder is `networks.decoder`. Optimised parameters are those with `requires_grad`.
- `method.momentum_schedule(total_steps)`: the per-step EMA momentum array (`networks.update_target(tau)` runs
  before each forward).
- `method.after_backward(step, steps_per_epoch)`: an optional gradient edit before the optimiser step (DINO
  freezes its last layer in the first epoch).
- `needs_flow`: whether batches must carry optical flow (the engine computes it only then).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from poodle.config import Config
from poodle.model.ema import EMANetworks
from poodle.model.schedules import ema_schedule

__all__ = ["EMANetworks", "Method", "feature_std"]


class Method(nn.Module):
    """Base class of a self-supervised method (see the module docstring for the contract)."""

    name = "method"
    needs_flow = False
    # Device types where run.precision=bf16 turns autocast on. CPU is off by default (CPU bf16 convolutions are
    # slower than fp32 on most machines); tests and the memory model add "cpu" to run the bf16 path there.
    autocast_device_types: tuple[str, ...] = ("cuda",)

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.networks: EMANetworks

    @property
    def ema_momentum(self) -> float:
        """Start of the cosine EMA schedule (ends at 1); a method reads it from its own config section."""
        return self.cfg.objective.ema_momentum

    def momentum_schedule(self, total_steps: int) -> np.ndarray:
        """Per-step EMA momentum, cosine from `ema_momentum` to 1 over `total_steps` (BYOL, DINO, PooDLe)."""
        return ema_schedule(total_steps, base=self.ema_momentum)

    def after_backward(self, step: int, steps_per_epoch: int) -> None:  # noqa: ARG002
        """Edit gradients before the optimiser step (default: nothing)."""

    def _networks_precision(self, device: torch.device):
        """bf16 autocast around the networks on GPU (run.precision=bf16); augmentations, sampling coordinates,
        normalisations and losses stay fp32 outside it."""
        enabled = device.type in self.autocast_device_types and self.cfg.run.precision == "bf16"
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)

    def forward(self, batch: Any, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        raise NotImplementedError


def feature_std(x: Tensor) -> Tensor:
    """Std over samples of L2-normalised features, averaged over channels, times sqrt(D).

    About 1 for well-spread features, 0 at collapse (the solo-learn/BYOL diagnostic). Detached; no host sync.
    (B, C, h, w) maps count every position as a sample.
    """
    x = x.detach().float()
    if x.dim() == 4:
        x = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    x = torch.nn.functional.normalize(x, dim=1)
    return x.std(dim=0).mean() * x.shape[1] ** 0.5
