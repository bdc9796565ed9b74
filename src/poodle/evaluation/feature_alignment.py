"""Does a backbone's dense feature map follow the optical flow? A diagnostic for the dense loss.

For frame pairs (a, b) with forward flow a -> b, compare the readout features of `a` at each pixel p with the
features of `b` taken at three places:

- `warped`: at p + flow_ab(p), i.e. `backward_warp(F_b, flow_ab)` - where the content of p moved to;
- `same_place`: at p itself (no motion compensation);
- `shuffled`: at a random other pixel of b (a chance baseline).

The first two are also reported over the pixels that move by at least one feature-map pixel, where the
difference between warping and not warping is visible at all.

Cosine similarity is averaged over the pixels that stay in frame and pass the forward-backward occlusion check.
A backbone trained with a correct flow-equivariance loss gives `warped` > `same_place` > `shuffled`; `warped` no
higher than `same_place` on moving scenes points at a warp/flow convention bug (or at features too coarse to tell
the two apart), and all three near 1 at a collapse.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from poodle.data.augment import normalize
from poodle.data.flow import backward_warp, in_bounds_mask, occlusion_mask, resize_flow


@dataclass
class AlignmentResult:
    warped: float  # mean cosine(F_a(p), F_b(p + flow(p))) over valid pixels
    same_place: float  # mean cosine(F_a(p), F_b(p))
    shuffled: float  # mean cosine(F_a(p), F_b(random q))
    valid_fraction: float  # share of feature-map pixels that entered the means
    pairs: int
    mean_motion_px: float  # mean |flow| over valid pixels, in feature-map pixels
    # The same two means over the valid pixels that move by >= 1 feature-map pixel, where warping must matter
    # (NaN when none does); most of a driving frame moves less than that at stride 8.
    warped_moving: float
    same_place_moving: float
    moving_fraction: float  # share of valid pixels that move >= 1 feature-map pixel

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _cos(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(x, y, dim=1, eps=1e-6)


@torch.no_grad()
def alignment_from_features(
    feat_a: torch.Tensor, feat_b: torch.Tensor, flow_ab: torch.Tensor, flow_ba: torch.Tensor, seed: int = 0
) -> AlignmentResult:
    """Features (N, C, h, w) of frames a and b, flows (N, 2, H, W) at image resolution (resized here to h x w)."""
    n, _, h, w = feat_a.shape
    fab = resize_flow(flow_ab.float(), (h, w))
    fba = resize_flow(flow_ba.float(), (h, w))
    valid = in_bounds_mask(fab) & ~occlusion_mask(fab, fba)  # (N, h, w)
    if valid.dim() == 4:
        valid = valid[:, 0]
    warped = _cos(feat_a, backward_warp(feat_b, fab))
    same = _cos(feat_a, feat_b)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(h * w, generator=g)
    shuffled = _cos(feat_a, feat_b.flatten(2)[:, :, perm].view_as(feat_b))
    m = valid.float()
    count = m.sum().clamp_min(1.0)
    motion = fab.norm(dim=1)
    moving = m * (motion >= 1.0).float()
    n_moving = float(moving.sum())

    def moving_mean(x: torch.Tensor) -> float:
        return float((x * moving).sum() / n_moving) if n_moving > 0 else float("nan")

    return AlignmentResult(
        warped=float((warped * m).sum() / count),
        same_place=float((same * m).sum() / count),
        shuffled=float((shuffled * m).sum() / count),
        valid_fraction=float(m.mean()),
        pairs=n,
        mean_motion_px=float((motion * m).sum() / count),
        warped_moving=moving_mean(warped),
        same_place_moving=moving_mean(same),
        moving_fraction=n_moving / float(count),
    )


@torch.no_grad()
def feature_alignment(
    feature_fn, frame_a: torch.Tensor, frame_b: torch.Tensor, flow_ab: torch.Tensor, flow_ba: torch.Tensor
) -> AlignmentResult:
    """`feature_fn(x)` maps ImageNet-normalised images (N, 3, H, W) to a dense map (N, C, h, w); frames are uint8
    or float in [0, 1] (N, 3, H, W)."""
    frames = [f.float().div(255.0) if f.dtype == torch.uint8 else f.float() for f in (frame_a, frame_b)]
    fa, fb = (feature_fn(normalize(x)).float() for x in frames)
    return alignment_from_features(fa, fb, flow_ab, flow_ba)


# ------------------------------------------------------------------------------------------------ inputs


def shard_pairs(shards, pairs: int) -> dict[str, torch.Tensor]:
    """The first `pairs` frame pairs (rounded up to whole groups) of a prepared shards folder, concatenated."""
    from poodle.data.shards import ShardPairs

    ds = ShardPairs(shards)
    items = [ds[i] for i in range(min(len(ds), max(1, -(-pairs // ds.repeat))))]
    return {k: torch.cat([it[k] for it in items]) for k in ("frame_a", "frame_b", "flow_ab", "flow_ba")}


def backbone_feature_fn(backbone, features: str = "auto"):
    """(feature function for `feature_alignment`, the feature map's name): the readout features of a
    `poodle.evaluation.backbones.FeatureBackbone` (`auto`: the SDM output when there is one, else layer4)."""
    name = backbone.resolve_features(features)
    backbone.eval()
    return (lambda x: backbone(x, with_sdm=name == "sdm")[name]), name


def pixel_features(x: torch.Tensor) -> torch.Tensor:
    """The image itself as a 3-channel 'feature' map: a check of the flow and the warp, independent of a model."""
    return x


def patch_features(x: torch.Tensor, size: int = 5) -> torch.Tensor:
    """Mean-removed size x size RGB patches as features (more discriminative than single pixels)."""
    x = x - x.mean(dim=(2, 3), keepdim=True)
    return F.unfold(x, size, padding=size // 2).view(x.shape[0], -1, *x.shape[-2:])


@torch.no_grad()
def dense_head_alignment(networks, frame_a, frame_b, flow_ab, flow_ba) -> AlignmentResult:
    """The same measure in the dense loss's own space: online prediction of frame a vs target projection of frame
    b (`PooDLeNetworks.online_dense` / `target_dense`). If the loss is wired to the flow correctly, training
    raises `warped` above `same_place` here, whatever the backbone features do."""
    was_training = networks.training
    networks.eval()
    try:
        a, b = (normalize(f.float().div(255.0) if f.dtype == torch.uint8 else f.float()) for f in (frame_a, frame_b))
        return alignment_from_features(networks.online_dense(a).float(), networks.target_dense(b).float(), flow_ab,
                                       flow_ba)  # fmt: skip
    finally:
        networks.train(was_training)
