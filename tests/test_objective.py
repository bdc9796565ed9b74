"""Known-answer tests of the PooDLe objective (spec 4): dense loss, pooled loss, symmetry, gradient flow."""

import pytest
import torch
from torch import nn

from poodle.config import load_config
from poodle.objective import PairBatch, PooDLeObjective, dense_loss, pooled_loss

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
    "config", ["table4_row7_poodle", "table4_row1_flowe", "pooled_only", "table4_row4_pool_lateral"]
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
