"""The subcrop pass leaves the encoder's BatchNorm running statistics to the full-frame pass (fidelity issue).

Training maths are unchanged (train-mode BN normalises with batch statistics either way); only the running
mean/var that a frozen readout later uses differ. The release's behaviour is `objective.bn_stats_from_subcrops`.
"""

import torch
from torch import nn

from poodle.config import load_config
from poodle.model.batchnorm import running_stats_frozen
from poodle.objective import PairBatch, PooDLeObjective
from test_objective import SMALL


def _bn_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running_" in k or "num_batches" in k}


def test_running_stats_frozen_keeps_buffers_and_forward():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4)).train()
    x = torch.randn(4, 3, 8, 8) * 3 + 1
    before = _bn_buffers(net)
    with running_stats_frozen(net):
        frozen_out = net(x)
    assert all(torch.equal(before[k], v) for k, v in _bn_buffers(net).items())
    assert all(m.track_running_stats for m in net.modules() if isinstance(m, nn.BatchNorm2d))  # restored
    out = net(x)  # the same batch statistics, now also moving the running buffers
    assert torch.equal(frozen_out, out)
    assert not torch.equal(before["1.running_mean"], net[1].running_mean)
    with running_stats_frozen(net, enabled=False):  # the release's behaviour: a no-op
        net(x)
    assert int(net[1].num_batches_tracked) == 2


def _objective(overrides):
    torch.manual_seed(0)
    return PooDLeObjective(load_config("poodle_ablation", [*SMALL, *overrides]))


def _batch():
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 3, 64, 128, generator=g), torch.rand(2, 3, 64, 128, generator=g)
    zero = torch.zeros(2, 2, 64, 128)
    return PairBatch(a, b, zero, zero.clone())


def test_subcrop_pass_leaves_frame_statistics():
    default = _objective([])
    dense_only = _objective(["objective.pooled=false"])  # same init for encoder, SDM and dense heads
    release = _objective(["objective.bn_stats_from_subcrops=true"])
    for obj in (default, dense_only, release):
        obj(_batch(), generator=torch.Generator().manual_seed(2))
    frames = _bn_buffers(dense_only.networks.encoder)
    ours = _bn_buffers(default.networks.encoder)
    assert ours.keys() == frames.keys() and all(torch.equal(ours[k], frames[k]) for k in frames)
    mixed = _bn_buffers(release.networks.encoder)
    assert not torch.equal(mixed["bn1.running_mean"], frames["bn1.running_mean"])
    assert int(mixed["bn1.num_batches_tracked"]) == 2 and int(ours["bn1.num_batches_tracked"]) == 1


def test_losses_do_not_depend_on_the_switch():
    default, release = _objective([]), _objective(["objective.bn_stats_from_subcrops=true"])
    out_a = default(_batch(), generator=torch.Generator().manual_seed(2))
    out_b = release(_batch(), generator=torch.Generator().manual_seed(2))
    assert torch.equal(out_a["loss"], out_b["loss"]) and torch.equal(out_a["pooled"], out_b["pooled"])


def test_pooled_only_model_still_learns_statistics_from_subcrops():
    obj = _objective(["objective.dense=false"])
    before = _bn_buffers(obj.networks.encoder)
    obj(_batch(), generator=torch.Generator().manual_seed(2))
    assert not torch.equal(before["bn1.running_mean"], obj.networks.encoder.state_dict()["bn1.running_mean"])
