"""The analytic FLOP model (poodle.engine.flops) against FlopCounterMode on the real step (forward + backward)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from poodle.config import load_config
from poodle.data.optical_flow import RaftFlow
from poodle.engine.flops import encoder_gflops, raft_gflops, step_flops
from poodle.objective import PairBatch, PooDLeObjective

SMALL = [
    "model.arch=resnet18",
    "data.resolution=[64,128]",
    "model.proj_hidden_dim=64",
    "model.proj_out_dim=32",
    "subcrops.size=64",
]


def _measured_flops_per_pair(cfg, pairs: int = 2) -> float:
    torch.manual_seed(0)
    objective = PooDLeObjective(cfg)
    h, w = cfg.data.resolution
    g = torch.Generator().manual_seed(0)
    flow = torch.randn(pairs, 2, h, w, generator=g)
    batch = PairBatch(torch.rand(pairs, 3, h, w, generator=g), torch.rand(pairs, 3, h, w, generator=g), flow, -flow)
    with FlopCounterMode(display=False) as counter:
        objective(batch, g)["loss"].backward()
    return counter.get_total_flops() / pairs


@pytest.mark.parametrize("config", ["poodle_bdd100k", "poodle_ablation", "table4_row1_flowe", "pooled_only"])
def test_analytic_step_flops_match_flop_counter(config):
    cfg = load_config(config, SMALL)
    analytic = step_flops(cfg)
    measured = _measured_flops_per_pair(cfg)
    assert analytic.total == pytest.approx(measured, rel=0.03)
    assert analytic.flow == 0.0  # cached flow: not counted


def test_disabled_branches_count_nothing():
    dense_only = step_flops(load_config("table4_row1_flowe", SMALL))
    pooled_only = step_flops(load_config("pooled_only", SMALL))
    assert dense_only.online_subcrops == dense_only.target_pooled_heads == 0.0
    assert pooled_only.online_dense == pooled_only.target_dense_heads == 0.0
    assert pooled_only.online_subcrops > 0 and dense_only.online_dense > 0


def test_flops_scale_with_resolution_and_subcrops():
    cfg = load_config("poodle_bdd100k", SMALL)
    base = step_flops(cfg)
    double = step_flops(cfg, resolution=(128, 256))
    # Full-frame convs scale with pixel count (the blur kernels grow too, so only the conv parts are exact).
    assert double.online_dense == pytest.approx(4 * base.online_dense, rel=1e-9)
    more = step_flops(load_config("poodle_bdd100k", [*SMALL, "subcrops.num=12"]))
    assert more.online_subcrops == pytest.approx(2 * base.online_subcrops, rel=1e-9)
    assert step_flops(cfg, flow_gflops=5.0).total == pytest.approx(base.total + 5e9)


def test_encoder_gflops_for_the_app_i_comparison():
    # torchvision ResNet-50 at 224x224 is 4.09 GMACs without the fc layer; App. I's figures are MACs at 512x1024.
    assert encoder_gflops("resnet50", (224, 224)) == pytest.approx(2 * 4.09, rel=0.01)
    r50 = encoder_gflops("resnet50", (512, 1024)) / 2
    sdm = encoder_gflops("resnet50", (512, 1024), sdm=True) / 2
    assert r50 == pytest.approx(43.3, rel=0.02) and sdm == pytest.approx(60.5, rel=0.02)


def test_raft_flops_on_meta_equal_a_real_run():
    """raft_gflops (meta device, no compute) counts what RaftFlow really runs, padding included."""
    torch.manual_seed(0)
    raft = RaftFlow("large", weights=None, iters=2)
    frames = torch.rand(2, 1, 3, 96, 136)  # RaftFlow pads to 128 x 136
    for shared in (True, False):
        with FlopCounterMode(display=False) as counter:
            if shared:
                raft.bidirectional(frames[0], frames[1])
            else:  # the release's call: [a; b] -> [b; a]
                raft(torch.cat([frames[0], frames[1]]), torch.cat([frames[1], frames[0]]))
        assert raft_gflops((96, 136), iters=2, shared=shared) == pytest.approx(counter.get_total_flops() / 1e9)
    assert raft_gflops((96, 136), 2, shared=True) < raft_gflops((96, 136), 2, shared=False)
    assert raft_gflops((96, 136), 2) == raft_gflops((128, 136), 2)  # the padding is counted
