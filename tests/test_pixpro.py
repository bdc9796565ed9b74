"""PixPro: positive pixel pairs from crop boxes, the pixel propagation module and the loss against known answers;
gradients, momentum schedule and an end-to-end engine run (exact resume, export, load_backbone)."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from poodle.config import AugmentConfig, load_config
from poodle.data.augment import denormalize
from poodle.engine.pair_sources import build_pair_source
from poodle.engine.train import pretrain
from poodle.objective import build_method
from poodle.objective.pixpro import PixPro, bin_centres, positive_mask, propagate, regression_loss
from poodle.objective.poodle import PairBatch
from poodle.objective.views import Views, make_views

TINY = [
    "model.arch=resnet18",
    "pixpro.crop_size=[32,64]",
    "pixpro.hidden_dim=32",
    "pixpro.out_dim=16",
    "optim.batch_size=4",
    "data.workers=0",
    "run.log_every=1",
    "run.ckpt_every=2",
    "run.precision=fp32",
]


def _views(boxes, flipped) -> Views:
    boxes = torch.tensor(boxes, dtype=torch.float32)
    return Views(torch.zeros(len(boxes), 3, 1, 1), boxes, torch.tensor(flipped))


def _mask(box1, box2, frame_hw, grid, flip1=False, flip2=False, ratio=0.7):
    v1, v2 = _views([box1], [flip1]), _views([box2], [flip2])
    return positive_mask((v1, v2), frame_hw, (grid, grid), ratio)[0]


# ----------------------------------------------------------------------------------------------- positives


def test_identical_square_bins_are_positive_only_with_themselves():
    # 65 x 65 frame: PixPro's (W - 1, H - 1) normalisation is isotropic, the whole-frame box has 0.25 x 0.25 bins on
    # a 4 x 4 grid. A neighbour is one bin width away: 0.25 / diag = 1 / sqrt(2) = 0.707 >= 0.7, so only i == j.
    mask = _mask([0, 0, 65, 65], [0, 0, 65, 65], (65, 65), (4, 4))
    assert torch.equal(mask, torch.eye(16))
    # at pos_ratio 0.75 the four edge neighbours join (diagonal neighbours are at 1.0)
    wide = _mask([0, 0, 65, 65], [0, 0, 65, 65], (65, 65), (4, 4), ratio=0.75)
    r, c = torch.arange(16) // 4, torch.arange(16) % 4
    manhattan = (r[:, None] - r[None]).abs() + (c[:, None] - c[None]).abs()
    assert torch.equal(wide, (manhattan <= 1).float())


def test_identical_boxes_on_a_wide_frame_pair_horizontal_neighbours():
    # 64 x 128 frame, whole-frame box, 2 x 4 grid: normalised bins are 0.25 wide and 0.5 high (x / 127, y / 63), so
    # a horizontal neighbour is at 0.25 / sqrt(0.25^2 + 0.5^2) = 0.447 < 0.7 (positive), two columns at 0.894 and a
    # vertical neighbour at 0.894 (negative). PixPro's normalisation is anisotropic on non-square frames.
    mask = _mask([0, 0, 128, 64], [0, 0, 128, 64], (64, 128), (2, 4))
    r, c = torch.arange(8) // 4, torch.arange(8) % 4
    expected = ((r[:, None] == r[None]) & ((c[:, None] - c[None]).abs() <= 1)).float()
    assert torch.equal(mask, expected)


def test_disjoint_boxes_have_no_positives():
    assert _mask([0, 0, 32, 32], [64, 32, 128, 64], (64, 128), (4, 4)).sum() == 0
    # touching boxes (pixels 0-32 and 33-65): the nearest centres are 1.125 bins apart, 0.795 diagonals
    assert _mask([0, 0, 33, 33], [33, 0, 66, 33], (65, 65), (4, 4)).sum() == 0


def test_a_flipped_view_mirrors_the_pattern():
    box = [0, 0, 65, 65]
    flipped = _mask(box, box, (65, 65), (4, 4), flip2=True)
    r, c = torch.arange(16) // 4, torch.arange(16) % 4
    mirror = ((r[:, None] == r[None]) & (c[:, None] == 3 - c[None])).float()  # bin (r, c) meets bin (r, 3 - c)
    assert torch.equal(flipped, mirror)
    assert torch.equal(_mask(box, box, (65, 65), (4, 4), flip1=True, flip2=True), torch.eye(16))
    wide = _mask([0, 0, 128, 64], [0, 0, 128, 64], (64, 128), (2, 4), flip1=True)
    plain = _mask([0, 0, 128, 64], [0, 0, 128, 64], (64, 128), (2, 4))
    assert torch.equal(wide, plain.view(8, 2, 4).flip(-1).view(8, 8))


def test_a_half_overlap_matches_the_hand_count():
    # 65 x 65 frame, square boxes 33 px wide shifted by 16 px (half the normalised width 32 / 64): view 1 columns 2, 3
    # have the centres of view 2 columns 0, 1; every other pair is at least one bin (0.707 diagonals) apart.
    mask = _mask([0, 0, 33, 33], [16, 0, 49, 33], (65, 65), (4, 4))
    r, c = torch.arange(16) // 4, torch.arange(16) % 4
    expected = ((r[:, None] == r[None]) & (c[:, None] - 2 == c[None])).float()
    assert torch.equal(mask, expected)


def _pixpro_reference_mask(coord_q, coord_k, h, w, ratio):
    """zdaxie/PixPro regression_loss's pos_mask, written from its formula (coords are its normalised boxes)."""
    xs = torch.arange(w, dtype=torch.float64).view(1, 1, -1).repeat(1, h, 1)
    ys = torch.arange(h, dtype=torch.float64).view(1, -1, 1).repeat(1, 1, w)
    qbw = ((coord_q[:, 2] - coord_q[:, 0]) / w).view(-1, 1, 1)
    qbh = ((coord_q[:, 3] - coord_q[:, 1]) / h).view(-1, 1, 1)
    kbw = ((coord_k[:, 2] - coord_k[:, 0]) / w).view(-1, 1, 1)
    kbh = ((coord_k[:, 3] - coord_k[:, 1]) / h).view(-1, 1, 1)
    diag = torch.max(torch.sqrt(qbw**2 + qbh**2), torch.sqrt(kbw**2 + kbh**2))
    qx = (xs + 0.5) * qbw + coord_q[:, 0].view(-1, 1, 1)
    qy = (ys + 0.5) * qbh + coord_q[:, 1].view(-1, 1, 1)
    kx = (xs + 0.5) * kbw + coord_k[:, 0].view(-1, 1, 1)
    ky = (ys + 0.5) * kbh + coord_k[:, 1].view(-1, 1, 1)
    d = torch.sqrt(
        (qx.view(-1, h * w, 1) - kx.view(-1, 1, h * w)) ** 2 + (qy.view(-1, h * w, 1) - ky.view(-1, 1, h * w)) ** 2
    )
    return (d / diag < ratio).float()


def _pixpro_coord(boxes, flipped, fh, fw):
    """RandomResizedCropCoord + RandomHorizontalFlipCoord: (j, i, j + w - 1, i + h - 1) / (W - 1, H - 1), x swapped."""
    b = boxes.double()
    c = torch.stack([b[:, 0] / (fw - 1), b[:, 1] / (fh - 1), (b[:, 2] - 1) / (fw - 1), (b[:, 3] - 1) / (fh - 1)], 1)
    return torch.where(flipped[:, None], c[:, [2, 1, 0, 3]], c)


def test_positive_mask_matches_pixpros_formula_on_random_views():
    g = torch.Generator().manual_seed(3)
    frames = torch.zeros(64, 3, 72, 144)
    aug = AugmentConfig(color_jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, hflip_p=0.5)
    v1 = make_views(frames, (32, 64), (0.08, 1.0), (0.75, 4 / 3), aug, 0.0, 0.0, g)
    v2 = make_views(frames, (32, 64), (0.08, 1.0), (0.75, 4 / 3), aug, 0.0, 0.0, g)
    assert v1.flipped.any() and (~v1.flipped).any()
    ours = positive_mask((v1, v2), (72, 144), ((3, 5), (3, 5)), 0.7)
    ref = _pixpro_reference_mask(
        _pixpro_coord(v1.boxes, v1.flipped, 72, 144), _pixpro_coord(v2.boxes, v2.flipped, 72, 144), 3, 5, 0.7
    )
    assert torch.equal(ours, ref)
    assert 0 < ours.sum() < ours.numel()
    assert torch.equal(positive_mask((v2, v1), (72, 144), ((3, 5), (3, 5)), 0.7), ours.transpose(1, 2))


def test_bin_centres_land_on_the_pixels_the_view_shows():
    # The frame encodes each pixel's normalised position; pooling an uncoloured view over its grid must give the
    # centres PixPro assigns to those bins, flipped views included (to about one pixel: PixPro's boxes end at the
    # last pixel index, the resize at the last pixel edge).
    fh, fw = 65, 129
    x = torch.arange(fw, dtype=torch.float32) / (fw - 1)
    y = torch.arange(fh, dtype=torch.float32) / (fh - 1)
    frame = torch.stack([x.expand(fh, fw), y[:, None].expand(fh, fw), torch.zeros(fh, fw)]).expand(16, 3, fh, fw)
    aug = AugmentConfig(color_jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, hflip_p=0.5)
    views = make_views(frame, (32, 64), (0.3, 1.0), (0.75, 4 / 3), aug, 0.0, 0.0, torch.Generator().manual_seed(0))
    assert views.flipped.any() and (~views.flipped).any()
    pooled = F.adaptive_avg_pool2d(denormalize(views.images)[:, :2], (4, 8)).flatten(2).transpose(1, 2)  # (B, 32, 2)
    centres, _ = bin_centres(views.boxes, views.flipped, (fh, fw), (4, 8))
    err = (pooled - centres).abs()
    assert (err[..., 0] < 1.0 / (fw - 1)).all() and (err[..., 1] < 1.0 / (fh - 1)).all(), err.amax()


# ----------------------------------------------------------------------------------------------- propagation


def _two_by_two():
    # channels (2), positions row-major: x0 = (1, 0), x1 = (0, 1), x2 = (1, 1), x3 = (-1, 0)
    return torch.tensor([[1.0, 0.0, 1.0, -1.0], [0.0, 1.0, 1.0, 0.0]]).view(1, 2, 2, 2)


def test_propagation_gamma_2_clamp_0_by_hand():
    # cos -> clamp 0 -> square: s0 = [1, 0, .5, 0], s1 = [0, 1, .5, 0], s2 = [.5, .5, 1, 0], s3 = [0, 0, 0, 1];
    # values are the normalised x: y0 = (1, 0) + .5 (r, r) with r = 1/sqrt2, ...
    r = 1 / math.sqrt(2)
    y = propagate(_two_by_two(), nn.Identity(), gamma=2.0, clamp=0.0).flatten(2)[0].T
    expected = torch.tensor([[1 + 0.5 * r, 0.5 * r], [0.5 * r, 1 + 0.5 * r], [0.5 + r, 0.5 + r], [-1.0, 0.0]])
    assert torch.allclose(y, expected, atol=1e-6)


def test_propagation_gamma_1_clamp_negative_by_hand():
    # clamp -0.5: cos -1 and -1/sqrt2 become -0.5. y0 = (1, 0) + r (r, r) - .5 (-1, 0) = (2, .5);
    # y2 = r (1, 0) + r (0, 1) + (r, r) - .5 (-1, 0) = (2r + .5, 2r)
    r = 1 / math.sqrt(2)
    y = propagate(_two_by_two(), nn.Identity(), gamma=1.0, clamp=-0.5).flatten(2)[0].T
    expected = torch.tensor([[2.0, 0.5], [0.5, 1.5], [2 * r + 0.5, 2 * r], [-1.5 - 0.5 * r, -0.5 * r]])
    assert torch.allclose(y, expected, atol=1e-6)


def test_the_value_transform_is_applied_before_normalising_the_values():
    swap = nn.Conv2d(2, 2, 1)
    with torch.no_grad():
        swap.weight.copy_(torch.tensor([[0.0, 3.0], [3.0, 0.0]]).view(2, 2, 1, 1))  # swap channels, scale 3
        swap.bias.zero_()
    plain = propagate(_two_by_two(), nn.Identity(), 2.0, 0.0)
    assert torch.allclose(propagate(_two_by_two(), swap, 2.0, 0.0), plain.flip(1), atol=1e-6)


# ----------------------------------------------------------------------------------------------- loss


def test_loss_is_minus_two_per_direction_when_features_agree_on_positives():
    g = torch.Generator().manual_seed(0)
    feats = F.normalize(torch.randn(3, 8, 4, 4, generator=g), dim=1)
    mask = torch.eye(16).expand(3, 16, 16)
    n = 16.0
    assert torch.allclose(regression_loss(feats, feats, mask), torch.tensor(-2 * n / (n + 1e-6)))
    both = regression_loss(feats, feats, mask) + regression_loss(feats, feats, mask.transpose(1, 2))
    assert abs(float(both) + 4.0) < 1e-5  # the minimum of PixPro's loss
    # opposite features give the maximum, +2 per direction
    assert torch.allclose(regression_loss(feats, -feats, mask), torch.tensor(2 * n / (n + 1e-6)))


def test_views_without_positives_add_zero():
    feats = F.normalize(torch.randn(2, 8, 4, 4), dim=1)
    mask = torch.stack([torch.eye(16), torch.zeros(16, 16)])
    # image 0 scores -2, image 1 has no positives and adds 0: batch mean -1
    assert torch.allclose(regression_loss(feats, feats, mask), torch.tensor(-1.0), atol=1e-6)
    assert float(regression_loss(feats, feats, torch.zeros(2, 16, 16))) == 0.0


# ----------------------------------------------------------------------------------------------- method


def _batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    fa = torch.randint(0, 256, (n, 3, 64, 128), generator=g, dtype=torch.uint8)
    return PairBatch(fa, torch.roll(fa, 3, dims=-1))


def test_gradients_reach_only_online_parameters_and_momentum_follows_the_recipe():
    cfg = load_config("pixpro_synthdrive", TINY)
    torch.manual_seed(0)
    method = build_method(cfg)
    assert isinstance(method, PixPro) and not method.needs_flow
    nets = method.networks
    assert sorted(nets.target.keys()) == ["encoder", "projector"]
    out = method(_batch(), torch.Generator().manual_seed(1))
    assert set(out) >= {"loss", "pixpro_std", "pixpro_positive_fraction"}
    assert -4.0 <= float(out["loss"].detach()) <= 4.0 and float(out["pixpro_std"]) > 0.1
    assert 0.0 < float(out["pixpro_positive_fraction"]) <= 1.0
    out["loss"].backward()
    for name, p in nets.named_parameters():
        if name.startswith("target."):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert nets.value_transform.weight.grad.abs().sum() > 0
    tau = method.momentum_schedule(100)
    assert tau[0] == pytest.approx(0.99) and tau[-1] == pytest.approx(1.0, abs=1e-5) and (tau[1:] >= tau[:-1]).all()


def test_both_view_modes_and_all_transform_depths_run():
    for overrides in (["pixpro.views=crops", "pixpro.transform_layers=0"], ["pixpro.transform_layers=2"]):
        cfg = load_config("pixpro_synthdrive", [*TINY, *overrides])
        torch.manual_seed(0)
        out = build_method(cfg)(_batch(2), torch.Generator().manual_seed(0))
        assert torch.isfinite(out["loss"]), overrides


# ----------------------------------------------------------------------------------------------- engine


def _train(out: Path, steps: int):
    cfg = load_config("pixpro_synthdrive", TINY)
    source, flow = build_pair_source(cfg)
    assert flow is None
    return pretrain(cfg, out, source, flow, stop_step=steps)


def test_engine_resumes_exactly_and_exports_a_torchvision_backbone(tmp_path):
    import torchvision

    from poodle.engine.export import export_backbone
    from poodle.evaluation.backbones import load_backbone

    straight = _train(tmp_path / "straight", 2)
    assert "pixpro_std" in straight and "pixpro_positive_fraction" in straight
    first = _train(tmp_path / "split", 1)
    assert first["step"] == 1
    resumed = _train(tmp_path / "split", 2)
    assert resumed["step"] == 2
    a, b = straight["networks"].state_dict(), resumed["networks"].state_dict()
    assert a.keys() == b.keys() and any(k.startswith("target.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k

    export_backbone(tmp_path / "straight", tmp_path / "r18.pth")
    sd = torch.load(tmp_path / "r18.pth", weights_only=True)
    missing, unexpected = torchvision.models.resnet18().load_state_dict(sd, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    backbone = load_backbone(tmp_path / "straight")
    assert torch.equal(backbone.encoder.conv1.weight, a["encoder.conv1.weight"])
