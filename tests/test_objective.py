"""Known-answer tests of the PooDLe objective (spec 4): dense loss, pooled loss, symmetry, gradient flow."""

import pytest
import torch
from torch import nn

from poodle.config import AugmentConfig, load_config
from poodle.data.augment import sample_dense_geometry
from poodle.data.flow import absolute_occlusion_mask, backward_warp
from poodle.objective import PairBatch, PooDLeObjective, dense_loss, pooled_loss
from poodle.objective.dense import chunked_dense_loss, dense_loss_options, dense_target_and_mask, upsample_to

SMALL = [
    "model.arch=resnet18",
    "model.proj_hidden_dim=64",
    "model.proj_out_dim=32",
    "subcrops.size=32",
    "data.resolution=[64,128]",
]
NO_AUG = [
    "augment.color_jitter_p=0",
    "augment.grayscale_p=0",
    "augment.blur_p=0",
    "augment.affine=false",
    "augment.hflip_p=0",
]


def _batch(n=2, h=64, w=128, seed=0, same=False):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, 3, h, w, generator=g)
    b = a.clone() if same else torch.rand(n, 3, h, w, generator=g)
    zero = torch.zeros(n, 2, h, w)
    return PairBatch(a, b, zero, zero.clone())


def test_dense_loss_is_zero_for_same_frame_zero_flow_identity_predictor():
    torch.manual_seed(0)
    obj = PooDLeObjective(load_config("poodle_ablation", [*SMALL, *NO_AUG, "objective.pooled=false"]))
    obj.networks.dense_predictor = nn.Identity()  # online == target network, so the maps must match exactly
    out = obj(_batch(same=True))
    assert out["dense"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["mask_fraction"].item() == pytest.approx(1.0)


def test_dense_loss_ignores_masked_out_pixels():
    g = torch.Generator().manual_seed(1)
    online = nn.functional.normalize(torch.randn(2, 8, 16, 32, generator=g), dim=1)
    target = nn.functional.normalize(torch.randn(2, 8, 16, 32, generator=g), dim=1)
    mask = (torch.rand(2, 1, 16, 32, generator=g) > 0.5).float()
    ref = dense_loss(online, target, mask)
    perturbed = torch.where(mask.bool(), online, torch.randn_like(online) * 100)
    assert torch.equal(dense_loss(perturbed, target, mask), ref)
    # Per image it is the masked mean of ||a - b||^2 = 2 - 2 cos.
    cos = (online * target).sum(1, keepdim=True)
    expected = (((2 - 2 * cos) * mask).sum((1, 2, 3)) / mask.sum((1, 2, 3))).mean()
    assert torch.allclose(ref, expected, atol=1e-5)


def test_pooled_loss_known_values():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert pooled_loss(x, x * 3).item() == pytest.approx(0.0)
    assert pooled_loss(x, -x).item() == pytest.approx(4.0)  # opposite unit vectors: ||2u||^2
    assert pooled_loss(x, x.flip(1)).item() == pytest.approx(2.0)  # orthogonal: 2 - 2 cos 90


def test_swapping_frame_order_gives_same_total():
    torch.manual_seed(0)
    obj = PooDLeObjective(load_config("poodle_ablation", [*SMALL, *NO_AUG, "objective.pooled=false"]))
    batch = _batch(seed=3)
    g = torch.Generator().manual_seed(5)
    flow = torch.randn(2, 2, 64, 128, generator=g)
    batch = PairBatch(batch.frame_a, batch.frame_b, flow, -flow)
    swapped = PairBatch(batch.frame_b, batch.frame_a, batch.flow_ba, batch.flow_ab)
    assert torch.allclose(obj(batch)["loss"], obj(swapped)["loss"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "config", ["table4_row7_poodle", "table4_row1_flowe", "flowe_bdd100k", "pooled_only", "table4_row4_pool_lateral"]
)
def test_gradients_reach_online_and_never_target(config):
    torch.manual_seed(0)
    obj = PooDLeObjective(load_config(config, SMALL))
    out = obj(_batch(seed=1))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    nets = obj.networks
    online = [p for name, p in nets.named_parameters() if not name.startswith("target")]
    assert all(not p.requires_grad for p in nets.target.parameters())
    assert all(p.grad is None for p in nets.target.parameters())
    with_grad = {
        name.split(".")[0] for name, p in nets.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0
    }
    assert "encoder" in with_grad
    cfg = obj.cfg
    if cfg.objective.dense:
        assert {"dense_projector", "dense_predictor"} <= with_grad
        if cfg.model.decoder_top_down or cfg.model.decoder_lateral:
            assert "decoder" in with_grad
    if cfg.objective.pooled:
        assert {"pooled_projector", "pooled_predictor"} <= with_grad
    assert online


def test_chunked_dense_loss_equals_whole_batch_in_value_and_gradient():
    base = [*SMALL, "objective.pooled=false", "augment.hflip_p=0.5"]
    results = []
    for chunk in (0, 1, 3):
        torch.manual_seed(0)
        obj = PooDLeObjective(load_config("poodle_ablation", [*base, f"objective.dense_chunk={chunk}"]))
        g = torch.Generator().manual_seed(7)
        batch = _batch(seed=2)
        flow = torch.randn(2, 2, 64, 128, generator=g) * 3
        out = obj(PairBatch(batch.frame_a, batch.frame_b, flow, -flow), torch.Generator().manual_seed(11))
        out["loss"].backward()
        grad = obj.networks.decoder.state_dict(keep_vars=True)
        results.append((out["loss"].detach(), {k: v.grad.clone() for k, v in grad.items() if v.grad is not None}))
    (l0, g0), *rest = results
    for loss, grads in rest:
        assert torch.allclose(loss, l0, rtol=1e-5, atol=1e-6)
        for k in g0:
            assert torch.allclose(grads[k], g0[k], rtol=1e-4, atol=1e-6), k


# ----------------------------------------------------------------------------------------------- release switches


def _translation(b, h, w, dx):
    fw = torch.zeros(b, 2, h, w)
    fw[:, 0] = dx
    return fw, -fw


def test_out_of_frame_mask_switch_keeps_pixels_whose_flow_leaves_the_image():
    # A consistent 3 px translation to the right: the last 3 columns land outside the paired frame.
    h, w = 16, 32
    fw, bw = _translation(1, h, w, 3.0)
    geo = sample_dense_geometry(1, (h, w), AugmentConfig(affine=False, hflip_p=0.0))
    target = torch.randn(1, 4, h // 8, w // 8)

    def mask(**kw):
        return dense_target_and_mask(target, fw, bw, geo, geo, **kw)[1][0, 0]

    inside = torch.ones(h, w)
    inside[:, -3:] = 0
    assert torch.equal(mask(), inside)  # PooDLe: in-frame mask, DDFlow
    assert torch.equal(mask(occlusion="absolute"), inside)  # FlowE's occlusion test, PooDLe's in-frame mask
    assert torch.equal(mask(occlusion="absolute", mask_out_of_frame=False), torch.ones(h, w))  # FlowE: all kept
    # DDFlow's relative test already rejects them (9 > 0.1 * 9 + 0.5): the switch alone changes nothing there.
    assert torch.equal(mask(mask_out_of_frame=False), inside)


def test_dense_eps_is_the_masked_mean_denominator():
    online = torch.nn.functional.normalize(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1), dim=1)
    target = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)  # orthogonal: ||a - b||^2 = 2
    tiny = torch.full((1, 1, 1, 1), 1e-6)  # a mask summing to 1e-6 makes the eps visible
    assert dense_loss(online, target, tiny).item() == pytest.approx(2 * 1e-6 / 1.1e-6, rel=1e-5)
    assert dense_loss(online, target, tiny, eps=1e-6).item() == pytest.approx(1.0, rel=1e-5)


def test_release_switches_give_the_hand_assembled_flowe_loss():
    # chunked_dense_loss with the FlowE options equals the loss assembled by hand from the release's pieces:
    # warp_then_unaffine with the half-pixel warp, absolute occlusion, no out-of-frame mask, the target's valid mask
    # unwarped, eps 1e-6.
    g = torch.Generator().manual_seed(3)
    b, c, h, w = 2, 8, 32, 64
    cfg = AugmentConfig(hflip_p=0.5)
    on_geo = sample_dense_geometry(b, (h, w), cfg, generator=g)
    tg_geo = sample_dense_geometry(b, (h, w), cfg, generator=g)
    online = torch.randn(b, c, h // 8, w // 8, generator=g)
    target = torch.randn(b, c, h // 8, w // 8, generator=g)
    fw = torch.nn.functional.interpolate(torch.randn(b, 2, 3, 4, generator=g) * 4, size=(h, w), mode="bilinear")
    bw = -fw + torch.randn(b, 2, h, w, generator=g)
    opts = dict(order="warp_then_unaffine", occlusion="absolute", occlusion_threshold_px=3.54,
                mask_out_of_frame=False, warp_convention="release", warp_target_valid=False)  # fmt: skip
    loss, _ = chunked_dense_loss(online, target, fw, bw, on_geo, tg_geo, eps=1e-6, chunk=1, **opts)

    up = upsample_to(target, (h, w))
    t = tg_geo.undo_affine(backward_warp(tg_geo.undo_flip(up), fw, convention="release"))
    t = torch.nn.functional.normalize(t, dim=1)
    o = torch.nn.functional.normalize(on_geo.undo(upsample_to(online, (h, w))), dim=1)
    m = (~absolute_occlusion_mask(fw, bw, 3.54) & tg_geo.valid_mask() & on_geo.valid_mask()).float()
    expected = dense_loss(o, t, m, eps=1e-6)
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-6)
    # Each switch changes the value on this input (so each one is wired through).
    defaults = dict(order="unaffine_then_warp", occlusion="ddflow", mask_out_of_frame=True, warp_convention="exact",
                    warp_target_valid=True)  # fmt: skip
    for key, value in defaults.items():
        other, _ = chunked_dense_loss(online, target, fw, bw, on_geo, tg_geo, eps=1e-6, chunk=1, **{**opts, key: value})
        assert not torch.allclose(other, loss, atol=1e-6, rtol=0), key


def test_objective_passes_the_dense_switches_through():
    # A consistent 3 px translation: with PooDLe's masks the right 3 columns drop out, with FlowE's they stay.
    flow, back = _translation(2, 64, 128, 3.0)
    batch = PairBatch(*_batch(seed=4).__dict__.values())
    batch = PairBatch(batch.frame_a, batch.frame_b, flow, back)
    poodle = load_config("poodle_ablation", [*SMALL, *NO_AUG, "objective.pooled=false"])
    flowe = load_config("flowe_bdd100k", [*SMALL, *NO_AUG])
    assert dense_loss_options(flowe.objective)["eps"] == 1e-6
    torch.manual_seed(0)
    assert PooDLeObjective(poodle)(batch)["mask_fraction"].item() == pytest.approx(1 - 3 / 128)
    torch.manual_seed(0)
    assert PooDLeObjective(flowe)(batch)["mask_fraction"].item() == pytest.approx(1.0)
