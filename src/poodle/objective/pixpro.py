"""PixPro (Xie et al., CVPR 2021) on frame pairs: pixel propagation and pixel-to-propagation consistency.

As zdaxie/PixPro `contrast/models/PixPro.py` and `contrast/data/transform_coord.py` (@e390d6b6):

- online: encoder -> layer4 map -> projector (1x1 conv C4 -> hidden (bias), BN, ReLU, 1x1 conv -> out_dim) ->
  pixel propagation module (PPM): s_ij = clamp(cos(x_i, x_j), min=clamp) ** gamma over all positions of one view,
  y_i = sum_j s_ij g(x_j) with g the value transform (0, 1 or 2 layers, its output L2-normalised), y L2-normalised;
- momentum: encoder + projector, EMA with momentum cosine from `pixpro.ema_momentum` (0.99) to 1 per step;
- positives: the S_h x S_w feature-bin centres of each view mapped into the source frame (coordinates normalised by
  (W - 1, H - 1); a flipped view mirrors x); a pair (i, j) is positive if its centre distance divided by the larger
  of the two views' bin diagonals is below `pos_ratio`;
- loss per direction: -2 * (sum of cos(y_i, x'_j) over positive pairs) / (number of positives + 1e-6) per image,
  mean over the batch; summed over both directions (view 1 propagated vs view 2 momentum, and vice versa). Images
  whose views do not overlap have no positives and add 0. The minimum is -4 (every positive pair agrees).

Video adaptation (`pixpro.views=frames`, default): view 1 is cut from frame a, view 2 from frame b. Both frames are
the same camera window (the same global-crop pixel grid at times t and t + dt), so the crop boxes of the two views
are in one coordinate system and PixPro's box geometry applies unchanged. What it cannot know is motion: a
"positive" pixel pair is the same image location at two times, which is a different object wherever the content
moved (the limitation of this flow-free baseline). `pixpro.views=crops` cuts both views from frame a (the image
recipe).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from poodle.config import Config
from poodle.model.ema import EMANetworks
from poodle.model.encoder import ResNetEncoder
from poodle.model.heads import ConvMLP
from poodle.objective.base import Method, feature_std
from poodle.objective.views import Views, make_views, view_sources

LOSS_EPS = 1e-6  # PixPro's regression_loss: positive-pair count + 1e-6


def value_transform(layers: int, dim: int) -> nn.Module:
    """PixPro's g: 0 = identity, 1 = 1x1 conv dim -> dim (bias), 2 = MLP2d(dim, dim, dim)."""
    if layers == 0:
        return nn.Identity()
    if layers == 1:
        return nn.Conv2d(dim, dim, kernel_size=1, bias=True)
    if layers == 2:
        return ConvMLP(dim, dim, dim)
    raise ValueError(f"pixpro.transform_layers must be 0, 1 or 2, got {layers}")


class PixProNetworks(EMANetworks):
    """Online encoder + projector + value transform; momentum copies of encoder and projector."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        p = cfg.pixpro
        self.encoder = ResNetEncoder(cfg.model.arch, dilated=cfg.model.dilated, init=cfg.model.init)
        self.decoder = None
        self.projector = ConvMLP(self.encoder.channels[-1], p.hidden_dim, p.out_dim, bias=True)
        self.value_transform = value_transform(p.transform_layers, p.out_dim)
        self._make_target(("encoder", "projector"))

    def online_projection(self, images: Tensor) -> Tensor:
        return self.projector(self.encoder(images)["layer4"])

    def target_projection(self, images: Tensor) -> Tensor:
        return self.target["projector"](self.target["encoder"](images)["layer4"])


def propagate(x: Tensor, transform: nn.Module, gamma: float, clamp: float) -> Tensor:
    """Pixel propagation module (PixPro `featprop`), (B, C, H, W) -> (B, C, H, W), not normalised.

    y_i = sum_j s_ij * normalize(g(x))_j with s_ij = clamp(cos(x_i, x_j), min=clamp) ** gamma (+1e-6 before the
    power when gamma < 1, as PixPro, so that 0 ** gamma has a gradient).
    """
    b, c, h, w = x.shape
    value = F.normalize(transform(x), dim=1).flatten(2)  # (B, C, HW)
    key = F.normalize(x, dim=1).flatten(2)
    sim = torch.bmm(key.transpose(1, 2), key).clamp(min=clamp)  # (B, HW, HW): s[b, i, j]
    if gamma < 1.0:
        sim = sim + 1e-6
    sim = sim**gamma
    return torch.bmm(value, sim.transpose(1, 2)).view(b, c, h, w)


def bin_centres(
    boxes: Tensor, flipped: Tensor, frame_hw: tuple[int, int], grid_hw: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """Centres (B, S_h * S_w, 2) (x, y), row-major, and bin diagonals (B,) of each view's feature grid, in PixPro's
    normalised frame coordinates.

    `boxes` are pixel edges x1, y1, x2, y2 in the source frame (`Views.boxes`). PixPro's `RandomResizedCropCoord`
    stores (j / (W - 1), i / (H - 1), (j + w - 1) / (W - 1), (i + h - 1) / (H - 1)), i.e. the first and last pixel
    index of the crop, and a flip swaps the two x values (so bins run right to left, and the width is negative).
    Bin k of the grid then has centre start + (k + 0.5) * (end - start) / S.
    """
    fh, fw = frame_hw
    sh, sw = grid_hw
    boxes = boxes.float()
    x1 = boxes[:, 0] / max(fw - 1, 1)
    y1 = boxes[:, 1] / max(fh - 1, 1)
    x2 = (boxes[:, 2] - 1) / max(fw - 1, 1)
    y2 = (boxes[:, 3] - 1) / max(fh - 1, 1)
    x1, x2 = torch.where(flipped, x2, x1), torch.where(flipped, x1, x2)
    bin_w, bin_h = (x2 - x1) / sw, (y2 - y1) / sh  # (B,)
    ix = torch.arange(sw, dtype=boxes.dtype, device=boxes.device) + 0.5
    iy = torch.arange(sh, dtype=boxes.dtype, device=boxes.device) + 0.5
    cx = x1[:, None, None] + ix[None, None, :] * bin_w[:, None, None]  # (B, 1, S_w)
    cy = y1[:, None, None] + iy[None, :, None] * bin_h[:, None, None]  # (B, S_h, 1)
    centres = torch.stack([cx.expand(-1, sh, sw), cy.expand(-1, sh, sw)], dim=-1).flatten(1, 2)
    return centres, torch.sqrt(bin_w**2 + bin_h**2)


def positive_mask(
    views: tuple[Views, Views], frame_hw: tuple[int, int], grids: tuple[tuple[int, int], tuple[int, int]], ratio: float
) -> Tensor:
    """(B, HW_1, HW_2) float: 1 where bin i of view 1 and bin j of view 2 are positives (PixPro's pos_mask).

    distance(centre_i, centre_j) / max(bin diagonal of view 1, of view 2) < ratio. The mask of the other direction
    is its transpose (the distance and the max are symmetric).
    """
    c1, d1 = bin_centres(views[0].boxes, views[0].flipped, frame_hw, grids[0])
    c2, d2 = bin_centres(views[1].boxes, views[1].flipped, frame_hw, grids[1])
    dist = torch.cdist(c1, c2, compute_mode="donot_use_mm_for_euclid_dist")  # exact, no |a|^2 + |b|^2 - 2ab
    return (dist / torch.maximum(d1, d2)[:, None, None] < ratio).float()


def regression_loss(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """PixPro's regression_loss: -2 * mean over images of the mean cosine over positive pairs.

    pred (B, C, H1, W1) and target (B, C, H2, W2) are L2-normalised over C; mask (B, H1 * W1, H2 * W2).
    An image with no positives contributes 0 (sum 0 / 1e-6).
    """
    logit = torch.bmm(pred.flatten(2).transpose(1, 2), target.flatten(2))  # (B, HW_1, HW_2)
    per_image = (logit * mask).sum(dim=(1, 2)) / (mask.sum(dim=(1, 2)) + LOSS_EPS)
    return -2.0 * per_image.mean()


class PixPro(Method):
    """PixPro without the instance branch (`pixpro-ins-loss-weight 0` in the official scripts)."""

    name = "pixpro"
    needs_flow = False

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.networks = PixProNetworks(cfg)

    @property
    def ema_momentum(self) -> float:
        return self.cfg.pixpro.ema_momentum

    def forward(self, batch, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        p, nets = self.cfg.pixpro, self.networks
        frame_hw = (int(batch.frame_a.shape[-2]), int(batch.frame_a.shape[-1]))
        sources = view_sources(batch.frame_a, batch.frame_b, p.views)
        views = tuple(
            make_views(src, p.crop_size, p.crop_scale, p.crop_ratio, self.cfg.augment, blur, sol, generator)
            for src, blur, sol in zip(sources, p.blur_p, p.solarize_p)
        )
        images = [v.images for v in views]
        if self.cfg.run.channels_last and images[0].device.type == "cuda":
            images = [x.contiguous(memory_format=torch.channels_last) for x in images]
        autocast = self._networks_precision(images[0].device)

        # Each view is its own forward (own BN batch statistics), as PixPro runs encoder(im_1) and encoder(im_2).
        with autocast:
            proj = [nets.online_projection(x) for x in images]
        with torch.no_grad(), autocast:
            target = [F.normalize(nets.target_projection(x).float(), dim=1) for x in images]
        # The PPM (similarities, power, propagation) and the loss in fp32.
        pred = [F.normalize(propagate(x.float(), nets.value_transform, p.gamma, p.clamp), dim=1) for x in proj]

        grids = (tuple(proj[0].shape[-2:]), tuple(proj[1].shape[-2:]))
        mask = positive_mask(views, frame_hw, grids, p.pos_ratio)  # view 1 bins x view 2 bins
        loss = regression_loss(pred[0], target[1], mask) + regression_loss(pred[1], target[0], mask.transpose(1, 2))
        has_positive = mask.flatten(1).amax(dim=1)
        return {
            "loss": loss,
            "pixpro_std": feature_std(torch.cat([proj[0], proj[1]])),
            # fraction of all (view-1 bin, view-2 bin) pairs that are positives, and of images with any positive
            "pixpro_positive_fraction": mask.mean().detach(),
            "pixpro_overlap_fraction": has_positive.mean().detach(),
        }
