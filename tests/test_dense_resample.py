"""The composed dense-loss resampling (`objective.dense_resample=composed`) against the sequential one.

Known answers on both paths (a whole-cell translation; linear ramps under flip, scale, rotation and flow), the
bound on where and by how much one bilinear read differs from upsample-then-resample, the closed-form loss
against autograd, the loss/gradient difference on random inputs, and the switch's validation.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from poodle.config import AugmentConfig, ConfigError, load_config
from poodle.data.augment import DenseGeometry, sample_dense_geometry
from poodle.data.flow import backward_warp
from poodle.objective import PairBatch, PooDLeObjective
from poodle.objective.dense import (
    chunked_dense_loss,
    dense_loss,
    dense_loss_options,
    dense_loss_per_image,
    dense_target_and_mask,
    online_full_resolution,
    upsample_to,
)
from poodle.objective.dense_fused import composed_per_image_loss
from poodle.objective.dense_grid import online_grid, sample_stride8, target_grid

PATHS = ("sequential", "composed")
H, W = 32, 64  # a stride-8 map of 4 x 8


def _geometry(b: int, flip: bool, affine: torch.Tensor | None = None) -> DenseGeometry:
    eye = torch.eye(2).expand(b, 2, 2).clone()
    return DenseGeometry(eye if affine is None else affine, torch.full((b,), flip), (H, W),
                         use_affine=affine is not None, use_flip=flip)  # fmt: skip


def _constant_flow(b: int, dx: float, dy: float = 0.0) -> torch.Tensor:
    flow = torch.zeros(b, 2, H, W)
    flow[:, 0], flow[:, 1] = dx, dy
    return flow


@pytest.mark.parametrize("resample", PATHS)
@pytest.mark.parametrize("order", ["unaffine_then_warp", "warp_then_unaffine"])
@pytest.mark.parametrize("flip", [False, True])
def test_whole_cell_translation_known_answer(resample, order, flip):
    # Frame b is frame a moved one stride-8 cell (8 px) right, so its stride-8 map is a's shifted by one column
    # (edge column repeated), and the flow a -> b is +8 px. The target brought into a's pixels must equal a's own
    # upsampled map wherever its read lies inside b's map: loss 0, on both paths, whatever the order and the flip.
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 6, H // 8, W // 8, generator=g)
    moved = torch.cat((z[..., :1], z[..., :-1]), dim=-1)
    flow = _constant_flow(2, 8.0)
    target_geo, online_geo = _geometry(2, flip), _geometry(2, False)
    target, mask = dense_target_and_mask(target_geo.apply(moved), flow, -flow, target_geo, online_geo, order=order,
                                         resample=resample)  # fmt: skip
    online = online_full_resolution(z, online_geo, (H, W), resample)
    assert mask[..., : W - 8].all() and not mask[..., W - 8 :].any()  # the flow leaves on the right
    # Reads past the last column centre of b's map clamp to it, where a's map still interpolates: not compared.
    exact = torch.zeros_like(mask)
    exact[..., : W - 12] = 1.0
    assert dense_loss(online, target, exact).item() == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(target * exact, online * exact, atol=1e-5, rtol=0)


@pytest.mark.parametrize("order", ["unaffine_then_warp", "warp_then_unaffine"])
@pytest.mark.parametrize("convention", ["exact", "release"])
def test_linear_ramp_known_answer_under_flip_scale_rotation_and_flow(order, convention):
    # A map whose channels are (0.5, x, y) in normalised coordinates is linear, so upsampling it (away from the
    # clamped border) and every bilinear resampling of it are exact: both paths must return the composed
    # coordinates themselves. Target: T2 = flip o 1.08 R(7 deg), flow (+2.5, -1.5) px; online: 0.93 R(-5 deg).
    b, h, w = 2, H // 8, W // 8
    ys, xs = torch.meshgrid((2 * torch.arange(h) + 1.0) / h - 1, (2 * torch.arange(w) + 1.0) / w - 1, indexing="ij")
    ramp = torch.stack((torch.full_like(xs, 0.5), xs, ys)).expand(b, 3, h, w).contiguous()

    def similarity(scale: float, degrees: float) -> torch.Tensor:
        c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
        return scale * torch.tensor([[c, -s * H / W], [s * W / H, c]]).expand(b, 2, 2).clone()

    target_geo = _geometry(b, True, similarity(1.08, 7.0))
    online_geo = _geometry(b, False, similarity(0.93, -5.0))
    dx, dy = 2.5, -1.5
    flow = _constant_flow(b, dx, dy)
    px, py = torch.meshgrid(torch.arange(W, dtype=torch.float32), torch.arange(H, dtype=torch.float32), indexing="xy")

    def norm(qx, qy):  # the warp's normalisation
        if convention == "exact":
            return (2 * qx + 1) / W - 1, (2 * qy + 1) / H - 1
        return 2 * qx / (W - 1) - 1, 2 * qy / (H - 1) - 1

    m = target_geo.affine[0]
    if order == "unaffine_then_warp":  # t(p) = M2 g(p + F)
        nx, ny = norm(px + dx, py + dy)
        gx, gy = -(m[0, 0] * nx + m[0, 1] * ny), m[1, 0] * nx + m[1, 1] * ny
        inner = [(nx, ny)]
    else:  # t(p) = Flip g(s + F), s = the pixel A2 n(p) reads
        nx, ny = (2 * px + 1) / W - 1, (2 * py + 1) / H - 1
        ax, ay = m[0, 0] * nx + m[0, 1] * ny, m[1, 0] * nx + m[1, 1] * ny
        gx, gy = norm(((ax + 1) * W - 1) / 2 + dx, ((ay + 1) * H - 1) / 2 + dy)
        inner = [(ax, ay)]
        gx = -gx
    mo = online_geo.affine[0]
    nx, ny = (2 * px + 1) / W - 1, (2 * py + 1) / H - 1
    ox, oy = mo[0, 0] * nx + mo[0, 1] * ny, mo[1, 0] * nx + mo[1, 1] * ny
    # Compare where every intermediate read is inside the linear part (between the outermost stride-8 centres).
    inside = torch.ones(H, W, dtype=torch.bool)
    for cx, cy in [*inner, (gx, gy), (ox, oy)]:
        inside &= (cx.abs() < 1 - 1.5 / w) & (cy.abs() < 1 - 1.5 / h)
    assert inside.float().mean() > 0.3
    target_expected = F.normalize(torch.stack((torch.full_like(gx, 0.5), gx, gy)), dim=0)
    online_expected = F.normalize(torch.stack((torch.full_like(ox, 0.5), ox, oy)), dim=0)
    for resample in PATHS:
        target, _ = dense_target_and_mask(ramp, flow, -flow, target_geo, online_geo, order=order,
                                          warp_convention=convention, resample=resample)  # fmt: skip
        online = online_full_resolution(ramp, online_geo, (H, W), resample)
        for i in range(b):
            torch.testing.assert_close(target[i][:, inside], target_expected[:, inside], atol=1e-5, rtol=0)
            torch.testing.assert_close(online[i][:, inside], online_expected[:, inside], atol=1e-5, rtol=0)


def test_one_read_equals_upsample_then_warp_except_across_cell_edges_and_within_the_bound():
    # Flow only (no affine): the sequential target interpolates the upsampled map U between the four pixel
    # centres around q = p + F(p); the composed one reads U(q) itself. U is bilinear inside each stride-8 cell, and
    # bilinear interpolation reproduces a bilinear function exactly, so the two agree wherever those four centres
    # lie in one cell. Across a cell edge U has a kink: in 1-D, a slope change ds (per full-resolution pixel)
    # inside a unit interval is missed by at most ds / 4, and ds = (second difference of the stride-8 map) / 8,
    # so per element |sequential - composed| <= (max |D2x z| + max |D2y z|) / 32 (edges padded by repetition, as
    # the upsampling clamps there). Compared where q lies between the outermost stride-8 centres: beyond them the
    # composed read blends in zero padding, which scales the vector without turning it (the whole-cell translation
    # test checks the normalised values there).
    g = torch.Generator().manual_seed(1)
    b, c = 2, 5
    z = torch.randn(b, c, H // 8, W // 8, generator=g)
    flow = F.interpolate(torch.randn(b, 2, 2, 3, generator=g) * 5, size=(H, W), mode="bilinear")
    geo = _geometry(b, False)
    sequential = backward_warp(upsample_to(z, (H, W)), flow)
    composed = sample_stride8(z, target_grid(flow, geo))
    q = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    qy, qx = q[0] + flow[:, 1], q[1] + flow[:, 0]
    inside = ((qx >= 3.5) & (qx <= W - 4.5) & (qy >= 3.5) & (qy <= H - 4.5)).unsqueeze(1)
    pad = F.pad(z, (1, 1, 1, 1), mode="replicate")
    d2x = (pad[..., 1:-1, 2:] - 2 * pad[..., 1:-1, 1:-1] + pad[..., 1:-1, :-2]).abs().amax(dim=(2, 3), keepdim=True)
    d2y = (pad[..., 2:, 1:-1] - 2 * pad[..., 1:-1, 1:-1] + pad[..., :-2, 1:-1]).abs().amax(dim=(2, 3), keepdim=True)
    diff = (sequential - composed).abs()
    assert (diff <= (d2x + d2y) / 32 + 1e-5)[inside.expand_as(diff)].all()

    # The pixels whose four neighbours share a stride-8 cell along both axes: equal to rounding.

    def one_cell(v: torch.Tensor) -> torch.Tensor:
        lo = torch.floor(v)
        return torch.floor((lo + 0.5) / 8 - 0.5) == torch.floor((lo + 1.5) / 8 - 0.5)

    same = (one_cell(qx) & one_cell(qy)).unsqueeze(1) & inside
    assert same.sum() > 0.6 * inside.sum()  # (7/8)^2 of them
    assert (diff <= 1e-5)[same.expand_as(diff)].all()
    assert diff[(~same & inside).expand_as(diff)].max() > 1e-3  # and across cell edges they do differ


@pytest.mark.parametrize("flip", [False, True])
def test_closed_form_loss_equals_autograd_of_the_sequential_formula(flip):
    # The composed path's loss (dense_fused) is dense_loss_per_image on normalised reads, in value and gradient,
    # including zero reads (pixels sent outside the map) and masked pixels.
    g = torch.Generator().manual_seed(2)
    b, c = 2, 7
    geo = sample_dense_geometry(b, (H, W), AugmentConfig(hflip_p=1.0 if flip else 0.0), generator=g)
    z = torch.randn(b, c, H // 8, W // 8, generator=g, requires_grad=True)
    grid = online_grid(geo, (H, W))
    target = torch.randn(b, c, H, W, generator=g)
    target[0, :, :3] = 0.0  # zero target vectors stay zero after F.normalize
    mask = (torch.rand(b, 1, H, W, generator=g) > 0.3).float()
    grad_out = torch.tensor([0.7, -1.3])
    expected = dense_loss_per_image(F.normalize(sample_stride8(z, grid), dim=1), F.normalize(target, dim=1), mask)
    (expected_grad,) = torch.autograd.grad(expected, z, grad_out)
    value = composed_per_image_loss(z, grid, target, mask)
    (grad,) = torch.autograd.grad(value, z, grad_out)
    torch.testing.assert_close(value, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grad, expected_grad, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("order", ["unaffine_then_warp", "warp_then_unaffine"])
@pytest.mark.parametrize("aug", ["flow_only", "flip", "affine_flip"])
def test_composed_loss_and_gradient_stay_close_to_sequential_on_random_maps(order, aug):
    # White-noise stride-8 maps are the worst case for the cell-edge terms (their second differences are as large
    # as the maps). Measured here: loss within 4e-4 relative, gradient cosine >= 0.99995 and |g_c - g_s| / |g_s|
    # <= 0.5 % with flow only or the flip, 1.3 % with the affine (the rotation's second-order term); the bounds
    # below leave a few times that. The mask is the same tensor on both paths.
    cfg = {"flow_only": AugmentConfig(affine=False, hflip_p=0.0), "flip": AugmentConfig(affine=False, hflip_p=0.5),
           "affine_flip": AugmentConfig()}[aug]  # fmt: skip
    g = torch.Generator().manual_seed(3)
    b, c, h, w = 4, 16, 64, 128
    online_geo = sample_dense_geometry(b, (h, w), cfg, generator=g)
    target_geo = sample_dense_geometry(b, (h, w), cfg, generator=g)
    z_online = torch.randn(b, c, h // 8, w // 8, generator=g, requires_grad=True)
    z_target = torch.randn(b, c, h // 8, w // 8, generator=g)
    flow = F.interpolate(torch.randn(b, 2, 3, 4, generator=g) * 4, size=(h, w), mode="bilinear")
    results = {}
    for resample in PATHS:
        z_online.grad = None
        loss, fraction = chunked_dense_loss(z_online, z_target, flow, -flow, online_geo, target_geo, order=order,
                                            resample=resample)  # fmt: skip
        loss.backward()
        results[resample] = (loss.detach(), fraction, z_online.grad.clone())
    (ls, fs, gs), (lc, fc, gc) = results["sequential"], results["composed"]
    assert torch.equal(fs, fc)
    assert abs(lc - ls) / ls < 2e-3
    assert F.cosine_similarity(gs.flatten(), gc.flatten(), dim=0) > 0.9995
    assert (gc - gs).norm() / gs.norm() < (0.015 if aug != "affine_flip" else 0.04)


def test_composed_target_is_zero_where_the_sequential_one_is():
    # With the out-of-frame mask off (the release's FlowE), pixels whose flow leaves the frame stay in the loss with
    # a zero target: the composed read must be zero exactly there too.
    flow = _constant_flow(1, 3.0)
    geo = _geometry(1, False)
    z = torch.randn(1, 4, H // 8, W // 8, generator=torch.Generator().manual_seed(4))
    targets = [dense_target_and_mask(z, flow, -flow, geo, geo, mask_out_of_frame=False, resample=r)[0] for r in PATHS]
    for target in targets:
        zero = target.abs().sum(1)[0] == 0
        assert zero[:, W - 3 :].all() and not zero[:, : W - 3].any()


def test_switch_is_validated_and_passed_through():
    with pytest.raises(ConfigError, match="objective.dense_resample.*sequential, composed"):
        load_config("poodle_ablation", ["objective.dense_resample=fused"])
    assert load_config("poodle_ablation").objective.dense_resample == "sequential"  # the default until measured
    cfg = load_config("poodle_bdd100k", ["objective.dense_resample=composed"])
    assert dense_loss_options(cfg.objective)["resample"] == "composed"
    x = torch.zeros(1, 2, 1, 1)
    geo = _geometry(1, False)
    with pytest.raises(ValueError, match="dense resample"):
        chunked_dense_loss(x, x, torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8, 8), geo, geo, resample="fused")


def test_objective_runs_the_composed_path_end_to_end():
    small = ["model.arch=resnet18", "model.proj_hidden_dim=64", "model.proj_out_dim=32", "subcrops.size=32",
             "data.resolution=[64,128]", "objective.pooled=false"]  # fmt: skip
    g = torch.Generator().manual_seed(5)
    flow = F.interpolate(torch.randn(2, 2, 2, 4, generator=g) * 3, size=(64, 128), mode="bilinear")
    batch = PairBatch(torch.rand(2, 3, 64, 128, generator=g), torch.rand(2, 3, 64, 128, generator=g), flow, -flow)
    out = {}
    for resample in PATHS:
        torch.manual_seed(0)
        obj = PooDLeObjective(load_config("poodle_bdd100k", [*small, f"objective.dense_resample={resample}"]))
        out[resample] = obj(batch, torch.Generator().manual_seed(6))
        out[resample]["loss"].backward()
        assert all(p.grad is not None for p in obj.networks.dense_predictor.parameters())
    assert out["composed"]["mask_fraction"] == out["sequential"]["mask_fraction"]
    assert out["composed"]["dense"].item() == pytest.approx(out["sequential"]["dense"].item(), rel=1e-3)


def test_roofline_counts_the_composed_loss_as_less_traffic():
    # The roofline follows the switch through dense_loss_options: composed moves a fraction of sequential's bytes
    # (at 512 x 1024, 8 pairs: 180 against 613 GB). The only matmuls are the masks' affine_grid, on both paths.
    from poodle.engine.roofline import dense_loss_roofline

    small = ["model.proj_out_dim=32", "data.resolution=[64,128]"]
    roofs = {r: dense_loss_roofline(load_config("poodle_bdd100k", [*small, f"objective.dense_resample={r}"]), 2)
             for r in PATHS}  # fmt: skip
    assert roofs["composed"].bytes < 0.5 * roofs["sequential"].bytes
    assert roofs["composed"].flops <= roofs["sequential"].flops < 1e4
