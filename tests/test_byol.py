"""BYOL on frame pairs: the loss, views, EMA and gradients against hand-computed answers, and an engine run."""

import json

import pytest
import torch
import torchvision

import poodle.objective.byol as byol_module
from poodle.config import load_config
from poodle.engine.export import export_backbone
from poodle.engine.pair_sources import build_pair_source
from poodle.engine.train import pretrain
from poodle.evaluation.backbones import load_backbone
from poodle.objective import PairBatch, build_method
from poodle.objective.byol import BYOL, regression_loss, symmetric_loss

TINY = [
    "byol.hidden_dim=64",
    "byol.out_dim=32",
    "byol.crop_size=[32,64]",
    "optim.batch_size=4",
    "data.workers=0",
    "run.log_every=1",
    "run.ckpt_every=1",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(*overrides):
    return load_config("byol_synthdrive", [*TINY, *overrides])


def _gen(seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _batch(n=4, frame_b=None, seed=0):
    g = _gen(seed)
    a = torch.randint(0, 256, (n, 3, 32, 64), generator=g, dtype=torch.uint8)
    b = torch.randint(0, 256, (n, 3, 32, 64), generator=g, dtype=torch.uint8) if frame_b is None else frame_b
    return PairBatch(a, b)


def test_loss_known_answers():
    x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    ortho = torch.tensor([[0.0, 3.0, 0.0], [0.0, 0.0, 0.5]])
    # Identical (up to scale): cos = 1, 2 - 2 = 0 per direction.
    assert symmetric_loss(x, 5 * x, x, x).item() == pytest.approx(0.0, abs=1e-7)
    # Orthogonal: cos = 0, 2 per direction, 4 summed.
    assert regression_loss(x, ortho).item() == pytest.approx(2.0, abs=1e-7)
    assert symmetric_loss(x, ortho, ortho, x).item() == pytest.approx(4.0, abs=1e-7)
    # Opposite: cos = -1, 4 per direction, 8 summed.
    assert symmetric_loss(x, -x, -x, x).item() == pytest.approx(8.0, abs=1e-6)
    # Batch mean: row 1 aligned (0), row 2 orthogonal (2) -> 1 per direction.
    mixed = torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert regression_loss(x, mixed).item() == pytest.approx(1.0, abs=1e-7)
    # 60 degrees: 2 - 2 * 0.5 = 1.
    sixty = torch.tensor([[0.5, 3**0.5 / 2, 0.0]])
    assert regression_loss(torch.tensor([[1.0, 0.0, 0.0]]), sixty).item() == pytest.approx(1.0, abs=1e-6)


def test_views_use_the_per_view_probabilities_and_the_configured_frames(monkeypatch):
    calls = []
    real = byol_module.make_views

    def spy(frames, **kw):
        calls.append((frames, kw["blur_p"], kw["solarize_p"]))
        return real(frames, **kw)

    monkeypatch.setattr(byol_module, "make_views", spy)
    cfg = _cfg("byol.blur_p=[0.3,0.7]", "byol.solarize_p=[0.1,0.9]")
    batch = _batch()
    BYOL(cfg).views(batch, _gen())
    assert [(c[1], c[2]) for c in calls] == [(0.3, 0.1), (0.7, 0.9)]
    assert calls[0][0] is batch.frame_a and calls[1][0] is batch.frame_b
    calls.clear()
    BYOL(_cfg("byol.views=crops")).views(batch, _gen())
    assert calls[0][0] is batch.frame_a and calls[1][0] is batch.frame_a


def test_frames_mode_cuts_view_2_from_frame_b_and_crops_mode_from_frame_a():
    # frame b is black: every augmentation keeps it black, so a view cut from it is constant per channel.
    batch = _batch(frame_b=torch.zeros(4, 3, 32, 64, dtype=torch.uint8))
    _, v2 = BYOL(_cfg("byol.views=frames")).views(batch, _gen())
    assert v2.images.flatten(2).std(dim=2).max().item() < 1e-5
    _, v2 = BYOL(_cfg("byol.views=crops")).views(batch, _gen())
    assert v2.images.flatten(2).std(dim=2).min().item() > 0.05


def test_update_target_is_the_hand_computed_ema():
    nets = BYOL(_cfg()).networks
    assert set(nets.target.keys()) == {"encoder", "projector"}  # the predictor has no target copy
    online = nets.projector[0].weight
    target = nets.target["projector"][0].weight
    with torch.no_grad():
        online.fill_(1.0)
        target.fill_(-3.0)
        nets.encoder.bn1.running_mean.fill_(0.25)
    nets.update_target(0.9)
    # 0.9 * (-3) + 0.1 * 1 = -2.6
    assert torch.allclose(target, torch.full_like(target, -2.6), atol=1e-6)
    assert torch.equal(nets.target["encoder"].bn1.running_mean, nets.encoder.bn1.running_mean)
    nets.update_target(1.0)
    assert torch.allclose(target, torch.full_like(target, -2.6), atol=1e-6)
    nets.update_target(0.0)
    assert torch.equal(target, online)


def test_gradients_reach_only_online_parameters():
    torch.manual_seed(0)
    method = BYOL(_cfg())
    out = method(_batch(), _gen())
    assert set(out) >= {"loss", "byol_std"}
    assert torch.isfinite(out["loss"]) and 0.0 <= out["loss"].item() <= 8.0
    assert not out["byol_std"].requires_grad
    out["loss"].backward()
    nets = method.networks
    for name, p in nets.named_parameters():
        if name.startswith("target."):
            assert p.grad is None and not p.requires_grad, name
        else:
            assert p.grad is not None, name
    for module in (nets.encoder.conv1, nets.projector[-1], nets.predictor[-1]):
        assert module.weight.grad.abs().sum() > 0


def test_identical_views_through_identical_networks_give_zero_loss():
    # No augmentation, whole-frame crops, both views from frame a: the views are equal. The target is a copy of
    # the online network at init and, with an identity predictor, q(v1) = z'(v2): the loss is at its minimum 0.
    cfg = _cfg("byol.views=crops", "byol.crop_scale=[1.0,1.0]", "byol.crop_ratio=[1.0,1.0]", "byol.blur_p=[0,0]",
               "byol.solarize_p=[0,0]", "augment.color_jitter_p=0", "augment.grayscale_p=0",
               "augment.hflip_p=0")  # fmt: skip
    torch.manual_seed(0)
    method = BYOL(cfg)
    method.networks.predictor = torch.nn.Identity()
    v1, v2 = method.views(_batch(), _gen())
    assert torch.equal(v1.images, v2.images)
    out = method(_batch(), _gen())
    assert out["loss"].item() == pytest.approx(0.0, abs=1e-5)


def test_momentum_schedule_reads_the_byol_section():
    method = build_method(_cfg("byol.ema_momentum=0.99", "objective.ema_momentum=0.5"))
    assert isinstance(method, BYOL) and not method.needs_flow
    tau = method.momentum_schedule(100)
    assert tau[0] == pytest.approx(0.99)
    assert (tau[1:] >= tau[:-1]).all() and 0.9999 < tau[-1] <= 1.0


def test_configs_load():
    cpu = load_config("byol_synthdrive")
    assert cpu.method == "byol" and cpu.optim.optimizer == "lars" and cpu.augment.hflip_p == 0.5
    full = load_config("byol_bdd100k")
    assert full.method == "byol" and full.model.arch == "resnet50"
    assert tuple(full.byol.crop_size) == (512, 1024) and tuple(full.data.resolution) == (720, 1280)
    assert full.optim.lr == pytest.approx(0.2 * full.optim.batch_size / 256)
    assert (full.optim.weight_decay, full.optim.warmup_epochs, full.optim.stop_epochs) == (1.5e-6, 10, 100)


def _train(run, steps):
    cfg = _cfg("optim.warmup_epochs=0")  # no warm-up: the first step already moves the weights
    source, flow = build_pair_source(cfg)
    assert flow is None
    return pretrain(cfg, run, source, flow, stop_step=steps)


def test_engine_resumes_exactly_and_exports(tmp_path):
    straight = _train(tmp_path / "straight", 2)
    assert _train(tmp_path / "split", 1)["step"] == 1
    resumed = _train(tmp_path / "split", 2)
    assert resumed["step"] == 2
    a, b = straight["networks"].state_dict(), resumed["networks"].state_dict()
    assert a.keys() == b.keys() and any(k.startswith("target.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    logged = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2]
    assert all("byol_std" in r and "loss" in r for r in logged)

    out = tmp_path / "backbone.pth"
    export_backbone(tmp_path / "split", out)
    result = torchvision.models.resnet18().load_state_dict(torch.load(out, weights_only=True), strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) == {"fc.weight", "fc.bias"}
    backbone = load_backbone(tmp_path / "split")
    assert backbone.decoder is None
    assert torch.equal(backbone.encoder.conv1.weight, b["encoder.conv1.weight"])
