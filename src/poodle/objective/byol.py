"""BYOL on frame pairs: the online network predicts the EMA target's projection of the other view.

    y = avgpool(layer4(f(v))), z = g(y), q = h(z)         (online f, g; predictor h)
    z' = g'(y'), with f', g' the EMA copies of f, g        (target, stop-gradient)
    L = mean_n [2 - 2 cos(q(v1), z'(v2))] + mean_n [2 - 2 cos(q(v2), z'(v1))]

g and h are Linear-BN-ReLU-Linear MLPs (`ConvMLP` on (N, C) vectors: identical to Linear-BN1d-ReLU-Linear); the
projection is not batch-normalised. The two directions are summed as OpenSelfSup sums them (the paper's
symmetrised loss); each direction is the per-sample `||normalize(q) - normalize(z')||^2 = 2 - 2 cos`, averaged over
the batch, so L is 0 for aligned vectors and 4 for orthogonal ones (OpenSelfSup's -2 cos per direction is L - 4).

The two views are random resized crops (`poodle.objective.views.make_views`) with BYOL's asymmetric blur and
solarise; with `byol.views=frames` view 1 is cut from frame a and view 2 from frame b of each pair (temporal
positives), with `byol.views=crops` both from frame a (the image recipe). Each view goes through the online and the
target network in its own pass, so BatchNorm sees the batch statistics of one view at a time, as in the official
code and OpenSelfSup.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from poodle.config import Config
from poodle.model.ema import EMANetworks
from poodle.model.encoder import ResNetEncoder
from poodle.model.heads import ConvMLP
from poodle.objective.base import Method, feature_std
from poodle.objective.views import Views, make_views, view_sources


class ByolNetworks(EMANetworks):
    """Online encoder + projector + predictor; the target holds EMA copies of the encoder and the projector."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        m, b = cfg.model, cfg.byol
        self.encoder = ResNetEncoder(m.arch, dilated=m.dilated, init=m.init)
        self.decoder = None
        self.projector = ConvMLP(self.encoder.channels[-1], b.hidden_dim, b.out_dim)
        self.predictor = ConvMLP(b.out_dim, b.hidden_dim, b.out_dim)
        self._make_target(("encoder", "projector"))

    def online_projection(self, x: Tensor) -> Tensor:
        """(B, 3, h, w) -> (B, out_dim): z = g(avgpool(f(x)))."""
        return self.projector(self.encoder.forward_pooled(x))

    def target_projection(self, x: Tensor) -> Tensor:
        """(B, 3, h, w) -> (B, out_dim): z' = g'(avgpool(f'(x))), no gradient to the target parameters."""
        return self.target["projector"](self.target["encoder"].forward_pooled(x))


def regression_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """Batch mean of ||normalize(p) - normalize(t)||^2 = 2 - 2 cos(p, t); (N, D) each, row n paired with row n."""
    p = F.normalize(prediction.float(), dim=1)
    t = F.normalize(target.float(), dim=1)
    return (2.0 - 2.0 * (p * t).sum(dim=1)).mean()


def symmetric_loss(q1: Tensor, z2: Tensor, q2: Tensor, z1: Tensor) -> Tensor:
    """q(v1) regresses z'(v2) plus q(v2) regresses z'(v1), summed (OpenSelfSup `BYOL.forward_train`)."""
    return regression_loss(q1, z2) + regression_loss(q2, z1)


class BYOL(Method):
    """BYOL with its two views cut from the two frames of a pair (`byol.views=frames`) or from frame a alone."""

    name = "byol"
    needs_flow = False

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.networks = ByolNetworks(cfg)

    @property
    def ema_momentum(self) -> float:
        return self.cfg.byol.ema_momentum

    def views(self, batch, generator: torch.Generator | None = None) -> tuple[Views, Views]:
        """The two augmented views of every pair: view 1 with blur_p[0]/solarize_p[0], view 2 with [1]."""
        b = self.cfg.byol
        src1, src2 = view_sources(batch.frame_a, batch.frame_b, b.views)
        common = dict(size=tuple(b.crop_size), scale=tuple(b.crop_scale), ratio=tuple(b.crop_ratio),
                      augment=self.cfg.augment)  # fmt: skip
        v1 = make_views(src1, blur_p=b.blur_p[0], solarize_p=b.solarize_p[0], generator=generator, **common)
        v2 = make_views(src2, blur_p=b.blur_p[1], solarize_p=b.solarize_p[1], generator=generator, **common)
        return v1, v2

    def forward(self, batch, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        nets = self.networks
        v1, v2 = self.views(batch, generator)
        x1, x2 = v1.images, v2.images
        if self.cfg.run.channels_last and x1.device.type == "cuda":
            x1 = x1.contiguous(memory_format=torch.channels_last)
            x2 = x2.contiguous(memory_format=torch.channels_last)
        autocast = self._networks_precision(x1.device)
        with torch.no_grad(), autocast:
            t1 = nets.target_projection(x1)
            t2 = nets.target_projection(x2)
        with autocast:
            z1 = nets.online_projection(x1)
            z2 = nets.online_projection(x2)
            q1 = nets.predictor(z1)
            q2 = nets.predictor(z2)
        loss = symmetric_loss(q1, t2.detach(), q2, t1.detach())
        return {
            "loss": loss,
            "byol": loss.detach(),
            "byol_std": feature_std(torch.cat([z1, z2])),
        }


__all__ = ["BYOL", "ByolNetworks", "regression_loss", "symmetric_loss"]
