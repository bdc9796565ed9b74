"""DINO (ResNet trunk) on frame pairs: loss, centring, temperatures, frozen last layer, views, engine run."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from poodle.config import DinoConfig, load_config
from poodle.engine.export import export_backbone, load_networks
from poodle.engine.pair_sources import build_pair_source
from poodle.engine.train import pretrain
from poodle.evaluation.backbones import load_backbone
from poodle.objective import build_method
from poodle.objective.dino import (
    DINOHead,
    cross_view_pairs,
    dino_loss,
    teacher_temperature,
    update_center,
)
from poodle.objective.poodle import PairBatch

SMALL = ["run.device=cpu", "model.arch=resnet18", "dino.out_dim=32", "dino.hidden_dim=16", "dino.bottleneck_dim=8",
         "dino.global_size=[32,64]", "dino.local_size=[16,32]", "dino.local_crops=2"]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _method(*overrides):
    torch.manual_seed(0)
    return build_method(load_config("dino_r50_synthdrive", [*SMALL, *overrides]))


def _batch(n=4, seed=0):
    g = _gen(seed)
    a = torch.randint(0, 256, (n, 3, 48, 96), dtype=torch.uint8, generator=g)
    b = torch.randint(0, 256, (n, 3, 48, 96), dtype=torch.uint8, generator=g)
    return PairBatch(a, b)


def _reference_dino_loss(student, teacher, center, temp, student_temp, ncrops):
    """DINOLoss.forward of facebookresearch/dino main_dino.py, transcribed literally (without the centre update)."""
    student_out = (student / student_temp).chunk(ncrops)
    teacher_out = F.softmax((teacher - center) / temp, dim=-1).detach().chunk(2)
    total, n_terms = 0.0, 0
    for iq, q in enumerate(teacher_out):
        for v in range(len(student_out)):
            if v == iq:
                continue
            total += torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1).mean()
            n_terms += 1
    return total / n_terms, n_terms


# ----------------------------------------------------------------------------------------------- loss pieces


def test_two_globals_and_two_locals_give_six_cross_entropy_terms():
    pairs = cross_view_pairs(4)
    assert len(pairs) == 6 == 2 * 4 - 2
    assert all(iq != v and iq in (0, 1) for iq, v in pairs)
    assert len(cross_view_pairs(10)) == 18  # DINO's 2 + 8 crops


def test_vectorised_loss_equals_dinos_loop():
    g = _gen(1)
    n, k, ncrops = 3, 7, 4
    student, teacher = torch.randn(ncrops * n, k, generator=g), torch.randn(2 * n, k, generator=g)
    center = torch.randn(1, k, generator=g)
    loss, _ = dino_loss(student, teacher, center, 0.04, 0.1, ncrops)
    ref, n_terms = _reference_dino_loss(student, teacher, center, 0.04, 0.1, ncrops)
    assert n_terms == 6
    assert torch.allclose(loss, ref, atol=1e-5, rtol=1e-5)


def test_identical_logits_and_zero_centre_give_the_entropy_and_are_minimal():
    # One sample, K = 2, logits (0, ln 3) / T with T = T_s = T_t: p = (1/4, 3/4) for every view, so every
    # cross-entropy term is the entropy H(p) = ln 4 - (3/4) ln 3.
    temp = 0.5
    logits = torch.tensor([[0.0, math.log(3.0) * temp]])
    student, teacher = logits.repeat(2, 1), logits.repeat(2, 1)
    loss, entropy = dino_loss(student, teacher, torch.zeros(1, 2), temp, temp, 2)
    hand = math.log(4.0) - 0.75 * math.log(3.0)
    assert loss.item() == pytest.approx(hand, abs=1e-6)
    assert entropy.item() == pytest.approx(hand, abs=1e-6)
    for delta in (-0.3, 0.2):  # any other student logits cost more (cross-entropy >= entropy)
        moved = student + torch.tensor([[0.0, delta]])
        assert dino_loss(moved, teacher, torch.zeros(1, 2), temp, temp, 2)[0] > loss


def test_centre_update_on_a_two_step_toy():
    center = torch.zeros(1, 2)
    update_center(center, torch.tensor([[1.0, 2.0], [3.0, 4.0]]), 0.9)  # batch mean (2, 3)
    assert torch.allclose(center, torch.tensor([[0.2, 0.3]]))
    update_center(center, torch.tensor([[0.0, 0.0], [2.0, -2.0]]), 0.9)  # batch mean (1, -1)
    assert torch.allclose(center, torch.tensor([[0.9 * 0.2 + 0.1, 0.9 * 0.3 - 0.1]]))  # (0.28, 0.17)


def test_teacher_temperature_schedules():
    cfg = DinoConfig(warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=2.0)
    expected = {0: 0.04, 5: 0.055, 7: 0.061, 10: 0.07, 11: 0.07, 100: 0.07}  # linear over 2 x 5 steps
    for step, value in expected.items():
        assert teacher_temperature(cfg, step, 5.0) == pytest.approx(value), step
    # DINO's per-epoch staircase: np.linspace(0.04, 0.07, 3)[epoch] for 3 warm-up epochs, then 0.07.
    cfg = DinoConfig(
        warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=3, teacher_temp_schedule="epoch"
    )
    table = np.concatenate([np.linspace(0.04, 0.07, 3), np.full(5, 0.07)])
    for step in range(0, 40, 3):
        assert teacher_temperature(cfg, step, 5.0) == pytest.approx(table[step // 5]), step
    assert teacher_temperature(DinoConfig(), 0, 1.0) == 0.04  # no warm-up: teacher_temp from the start


# ----------------------------------------------------------------------------------------------- the method


def test_head_is_dinos():
    head = DINOHead(12, 20, hidden_dim=16, bottleneck_dim=8)
    assert [type(m).__name__ for m in head.mlp] == ["Linear", "GELU", "Linear", "GELU", "Linear"]
    g = head.last_layer.parametrizations.weight.original0
    assert torch.equal(g, torch.ones(20, 1)) and not g.requires_grad
    assert head.last_layer.bias is None
    assert torch.allclose(head.last_layer.weight.norm(dim=1), torch.ones(20), atol=1e-5)  # rows of norm 1
    assert all(not isinstance(v, torch.nn.Module) for v in head.state_dict().values())
    x = torch.randn(5, 12)
    assert torch.allclose(head.project(x).norm(dim=1), torch.ones(5), atol=1e-5)
    bn = DINOHead(12, 20, use_bn=True, norm_last_layer=False, hidden_dim=16, bottleneck_dim=8)
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in bn.mlp) == 2
    assert bn.last_layer.parametrizations.weight.original0.requires_grad


def test_bf16_autocast_keeps_the_last_layer_and_the_loss_in_fp32():
    m = _method("run.precision=bf16")
    m.autocast_device_types = ("cpu",)  # run the GPU path on the CPU
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = m.networks.head.project(torch.randn(3, 512))
        assert z.dtype == torch.float32 and m.networks.head.logits(z).dtype == torch.float32
    out = m(_batch(), _gen())
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    assert m.networks.center.dtype == torch.float32


def test_views_come_from_the_right_frames():
    # No augmentation: every pixel of a view is its source frame's constant colour (a = 0, b = 255).
    plain = ["augment.color_jitter_p=0", "augment.grayscale_p=0", "augment.hflip_p=0", "dino.blur_p=[0,0,0]",
             "dino.solarize_p=[0,0,0]", "dino.local_crops=3"]  # fmt: skip
    n = 2
    batch = PairBatch(torch.zeros(n, 3, 48, 96, dtype=torch.uint8), torch.full((n, 3, 48, 96), 255, dtype=torch.uint8))

    def sources(images, blocks):
        level = images.mean(dim=(1, 2, 3)).view(blocks, n)
        return ["a" if (lv < 0).all() else "b" for lv in level]  # normalised 0 < 0 < normalised 1

    m = _method(*plain)
    globals_, locals_ = m.views(batch, _gen())
    assert globals_.shape == (2 * n, 3, 32, 64) and locals_.shape == (3 * n, 3, 16, 32)
    assert sources(globals_, 2) == ["a", "b"] and sources(locals_, 3) == ["a", "a", "b"]
    m = _method(*plain, "dino.views=crops")
    globals_, locals_ = m.views(batch, _gen())
    assert sources(globals_, 2) == ["a", "a"] and sources(locals_, 3) == ["a", "a", "a"]


def test_centre_follows_the_teacher_and_only_online_parameters_get_gradients():
    m = _method()
    batch = _batch()
    m.train()
    out = m(batch, _gen(3))
    assert {"loss", "dino_std", "dino_teacher_entropy", "dino_kl", "dino_teacher_temp"} <= out.keys()
    assert all(not v.requires_grad for k, v in out.items() if k != "loss")
    # The centre moved by 0.1 x the batch mean of the teacher's logits of the same two global crops.
    globals_, _ = m.views(batch, _gen(3))
    with torch.no_grad():
        teacher = m.networks.teacher_logits(globals_)
    assert torch.allclose(m.networks.center, 0.1 * teacher.mean(dim=0, keepdim=True), atol=1e-6)
    out["loss"].backward()
    for name, p in m.networks.named_parameters():
        if name.startswith("target.") or not p.requires_grad:
            assert p.grad is None, name
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert not m.networks.head.last_layer.parametrizations.weight.original0.requires_grad
    # eval mode leaves the centre alone
    before = m.networks.center.clone()
    m.eval()
    with torch.no_grad():
        m(batch, _gen(4))
    assert torch.equal(m.networks.center, before)


def test_last_layer_is_frozen_in_epoch_zero_and_the_temperature_follows_the_step():
    m = _method("dino.warmup_teacher_temp=0.02", "dino.warmup_teacher_temp_epochs=1")
    last_v = m.networks.head.last_layer.parametrizations.weight.original1
    batch = _batch()
    assert m.networks.teacher_temp.item() == pytest.approx(0.02)
    for step, frozen in ((0, True), (3, True), (4, False), (9, False)):  # 4 steps per epoch
        m.zero_grad(set_to_none=True)
        m(batch, _gen(step))["loss"].backward()
        m.after_backward(step, 4.0)
        if frozen:
            assert last_v.grad is None
        else:
            assert last_v.grad is not None and last_v.grad.abs().sum() > 0
        assert m.networks.head.mlp[0].weight.grad is not None
        expected = 0.02 + 0.02 * min(step + 1, 4) / 4  # temperature of the next step: 0.02 -> 0.04 over 4 steps
        assert m.networks.teacher_temp.item() == pytest.approx(expected)


# ----------------------------------------------------------------------------------------------- configs and engine


def test_shipped_configs_load():
    cpu = load_config("dino_r50_synthdrive")
    assert cpu.method == "dino" and cpu.model.arch == "resnet18" and cpu.augment.hflip_p == 0.5
    assert cpu.optim.lr == pytest.approx(0.03 * cpu.optim.batch_size / 256)
    full = load_config("dino_r50_bdd100k")
    assert full.method == "dino" and full.model.arch == "resnet50" and tuple(full.dino.global_size) == (512, 1024)
    assert full.optim.optimizer == "sgd" and full.optim.lr == pytest.approx(0.03 * full.optim.batch_size / 256)
    assert all(s % 8 == 0 for s in full.dino.local_size)
    assert all(abs(s - 96 / 224 * g) < 8 for s, g in zip(full.dino.local_size, full.dino.global_size))


# 2 steps per epoch: the last layer is frozen on step 0 only; the teacher temperature goes 0.02, 0.03, 0.04.
ENGINE = [
    *SMALL,
    "optim.batch_size=4",
    "optim.epoch_pairs=8",
    "data.workers=0",
    "run.log_every=1",
    "run.ckpt_every=1",
    "dino.warmup_teacher_temp=0.02",
    "dino.warmup_teacher_temp_epochs=1",
    "dino.freeze_last_layer_epochs=0.5",
]  # fmt: skip  (2 steps per epoch: last layer frozen on step 0 only)


def _train(out, steps):
    cfg = load_config("dino_r50_synthdrive", ENGINE)
    source, flow = build_pair_source(cfg)
    return pretrain(cfg, out, source, flow, stop_step=steps)


def test_engine_run_resumes_exactly_and_exports(tmp_path):
    initial = _method().networks.head.last_layer.parametrizations.weight.original1.detach().clone()
    straight = _train(tmp_path / "straight", 2)
    first = _train(tmp_path / "split", 1)
    frozen = first["networks"].head.last_layer.parametrizations.weight.original1
    assert torch.equal(frozen, initial)  # step 0: no gradient, no update of the last layer
    resumed = _train(tmp_path / "split", 2)
    assert resumed["step"] == 2
    a, b = straight["networks"].state_dict(), resumed["networks"].state_dict()
    assert a.keys() == b.keys() and {"center", "teacher_temp"} <= a.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6, rtol=1e-5), k
    assert a["center"].abs().sum() > 0 and a["teacher_temp"].item() == pytest.approx(0.04)
    assert not torch.equal(a["head.last_layer.parametrizations.weight.original1"], initial)
    logged = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2]
    assert [r["dino_teacher_temp"] for r in logged] == pytest.approx([0.02, 0.03])
    assert all(r["dino_std"] > 0 for r in logged)

    export_backbone(tmp_path / "split", tmp_path / "r18.pth")
    missing, unexpected = torchvision.models.resnet18().load_state_dict(
        torch.load(tmp_path / "r18.pth", weights_only=True), strict=False
    )
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    nets, _ = load_networks(tmp_path / "split")
    bb = load_backbone(tmp_path / "split")
    assert bb.decoder is None and torch.equal(bb.encoder.conv1.weight, nets.encoder.conv1.weight)
