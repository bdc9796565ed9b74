"""Label-free optical flow: the UFlow/SMURF loss geometry against known answers, the RAFT training loop (exact
resume, signals, divergence, DDP on gloo), and the trained model as a flow source and benchmark row."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from poodle.config import ConfigError, FlowConfig, shipped_configs
from poodle.data.flow import backward_warp
from poodle.engine.checkpoint import load_checkpoint
from poodle.engine.train import TrainingError
from poodle.flowtrain import losses as L
from poodle.flowtrain.config import FlowLossConfig, load_flow_train_config

HERE = Path(__file__).parent
# A tiny run: 128x128 crops (RAFT's minimum), one pair per step, two RAFT updates, SynthDrive rendered on the fly.
TINY = ["data.resolution=[128,128]", "data.canvas=[128,160]", "data.scale=[1.0,1.0]", "data.workers=0",
        "optim.batch_size=1", "model.iters=2", "run.log_every=1", "run.ckpt_every=2", "optim.warmup_steps=0",
        "optim.decay_after=0", "loss.occlusion_after=1"]  # fmt: skip


def textured(h=48, w=64, seed=0):
    """A smooth random texture (B=1, 3, h, w) in [0, 1]: census and warps see structure everywhere."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, h // 4, w // 4, generator=g)
    return F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)


def translate_pair(d=3, h=48, w=64):
    """Frame b = frame a moved right by d px: F_ab = (+d, 0) and F_ba = (-d, 0) everywhere."""
    big = textured(h, w + d)
    a, b = big[..., d:], big[..., :w]  # b(x) = big(x) = a(x - d): content at x in a is at x + d in b
    fab = torch.zeros(1, 2, h, w)
    fab[:, 0] = d
    return a, b, fab, -fab


# ----------------------------------------------------------------------------------------------------- geometry


def test_translation_has_zero_census_loss_at_the_true_flow_only():
    d = 3
    a, b, fab, _ = translate_pair(d)
    mask = torch.ones(1, 1, *a.shape[-2:])
    # The strip whose target leaves frame b, and the 3 px next to it whose 7x7 census windows reach into it.
    mask[..., -(d + 3) :] = 0
    at_truth = L.census_loss(a, backward_warp(b, fab), mask)
    at_zero = L.census_loss(a, b, mask)
    assert at_truth <= L.robust_penalty(torch.zeros(())) + 1e-4  # the penalty floor (0 + 0.01)^0.4
    assert at_zero > 5 * at_truth


def test_census_transform_is_invariant_to_brightness_and_flat_on_flat_images():
    img = textured()
    c = L.census_transform(img)
    assert c.shape == (1, 49, 48, 64)
    inner = (..., slice(3, -3), slice(3, -3))  # away from the zero padding, which the loss masks
    assert torch.allclose(c[inner], L.census_transform(img + 0.1)[inner], atol=1e-4)  # an offset cancels
    flat = L.census_transform(torch.full((1, 3, 20, 20), 0.5))
    assert flat[..., 3:-3, 3:-3].abs().max() == 0


def test_forward_backward_check_on_a_translation_marks_exactly_the_strip_leaving_the_frame():
    d = 4
    _, _, fab, fba = translate_pair(d)
    for occlusion in (True, False):
        mask = L.valid_photometric_mask(fab, fba, 0.01, 0.5, occlusion)
        expected = torch.ones_like(mask)
        expected[..., -d:] = 0  # x + 4 > W - 1
        assert torch.equal(mask, expected)
    # b -> a: the strip at the left edge disoccludes
    mask_ba = L.valid_photometric_mask(fba, fab, 0.01, 0.5, True)
    assert mask_ba[..., :d].sum() == 0 and mask_ba[..., d:].min() == 1


def test_forward_backward_check_flags_inconsistent_pixels():
    _, _, fab, fba = translate_pair(2)
    bad = fba.clone()
    bad[..., 10:20, 10:20] = 5.0  # b -> a disagrees with a -> b inside a block
    mask = L.valid_photometric_mask(fab, bad, 0.01, 0.5, True)
    assert mask[..., 12:18, 10:16].sum() == 0 and mask[..., 30:, :40].min() == 1


def test_second_order_smoothness_is_zero_for_affine_flow_and_edges_lower_the_weight():
    img = textured(64, 64)
    y, x = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    affine = torch.stack((0.1 * x + 0.05 * y + 2, -0.03 * x + 1)).unsqueeze(0)
    assert L.smoothness_loss(affine, img, order=2) < 1e-3
    assert L.smoothness_loss(torch.full((1, 2, 64, 64), 3.0), img, order=1) < 1e-3
    noisy = affine + torch.randn(1, 2, 64, 64, generator=torch.Generator().manual_seed(0))
    assert L.smoothness_loss(noisy, torch.zeros(1, 3, 64, 64), order=2) > 0.1  # flat image: full weight
    # a flow edge where the image has an edge costs less than the same flow edge on a flat image
    step_flow = torch.zeros(1, 2, 64, 64)
    step_flow[..., 32:] = 8.0
    edge_img = torch.zeros(1, 3, 64, 64)
    edge_img[..., 32:] = 1.0
    flat_img = torch.zeros(1, 3, 64, 64)
    assert L.smoothness_loss(step_flow, edge_img) < 0.1 * L.smoothness_loss(step_flow, flat_img)


def test_sequence_weights_and_selfsup_crop_scaling():
    assert L.sequence_weights(3, 0.8) == pytest.approx([0.64, 0.8, 1.0])
    flow = torch.full((1, 2, 40, 80), 2.0)
    cropped = L.selfsup_crop(flow, 10, is_flow=True)  # 20x60 window resized to 40x80: vectors x2 and x4/3
    assert torch.allclose(cropped[:, 1], torch.full((1, 40, 80), 4.0))
    assert torch.allclose(cropped[:, 0], torch.full((1, 40, 80), 2.0 * 80 / 60))


def test_selfsup_loss_vanishes_when_the_student_matches_the_teacher():
    _, _, fab, fba = translate_pair(2, 48, 64)
    teacher = torch.cat((fab, fba))
    student = L.selfsup_crop(teacher, 8, is_flow=True)
    zero = L.selfsup_loss(teacher, L.swap_directions(teacher), student, L.swap_directions(student), 8,
                          sigma_student=1e-4)  # a strict student mask: the student counts as inconsistent  # fmt: skip
    off = L.selfsup_loss(teacher, L.swap_directions(teacher), student + 3, L.swap_directions(student + 3), 8,
                         sigma_student=1e-4)  # fmt: skip
    assert zero < 1e-2 and off > 1.0


def test_unsupervised_loss_prefers_the_true_flow_and_backpropagates():
    a, b, fab, fba = translate_pair(3)
    img1, img2 = torch.cat((a, b)), torch.cat((b, a))
    cfg = FlowLossConfig()
    true = torch.cat((fab, fba)).requires_grad_(True)
    zero = torch.zeros_like(true, requires_grad=True)
    lt = L.unsupervised_flow_loss(img1, img2, [true], cfg)["loss"]
    lz = L.unsupervised_flow_loss(img1, img2, [zero, zero], cfg)["loss"]
    assert lt < 0.5 * lz
    lz.backward()
    assert zero.grad is not None and zero.grad.abs().sum() > 0


def synthdrive_pair(dt, index=0, size=(128, 256)):
    """A rendered SynthDrive pair in [0, 1] with its exact flow a->b and the mask of pixels visible in b."""
    import numpy as np

    from poodle.data.flow import in_bounds_mask
    from poodle.data.synthdrive import SynthDriveSequence

    seq = SynthDriveSequence(seed=0, index=index, resolution=size, fps=30)

    def img(t):
        return torch.from_numpy(np.array(seq.frame(t), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]

    flow = torch.from_numpy(np.ascontiguousarray(seq.flow(0, dt), dtype=np.float32)).permute(2, 0, 1)[None]
    occluded = torch.from_numpy(np.asarray(seq.occlusion(0, dt), dtype=bool))[None, None]
    return img(0), img(dt), flow, (in_bounds_mask(flow) & ~occluded).float()


@pytest.mark.parametrize("blur", [0.0, 2.0])
def test_census_on_synthdrive_is_lowest_at_the_exact_flow(blur):
    """Known answer on real renders: the loss at SynthDrive's exact flow is well below zero flow, the negated flow
    and the exact flow off by one pixel (a wrong warp sign or pixel convention would break this)."""
    a, b, flow, visible = synthdrive_pair(4)
    a, b = L.gaussian_blur(a, blur), L.gaussian_blur(b, blur)

    def loss(f):
        return float(L.census_loss(a, backward_warp(b, f), visible))

    at_truth = loss(flow)
    assert at_truth < 0.75 * loss(torch.zeros_like(flow))
    assert at_truth < 0.75 * loss(-flow)
    assert at_truth < 0.9 * loss(flow + torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))


def test_gaussian_blur_keeps_constants_and_is_off_at_zero():
    img = textured()
    assert L.gaussian_blur(img, 0.0) is img
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(L.gaussian_blur(flat, 1.5), flat)
    assert L.gaussian_blur(img, 2.0).std() < img.std()


# ----------------------------------------------------------------------------------------------------- model


def test_training_forward_matches_torchvision_raft_at_every_update():
    from torchvision.models.optical_flow import raft_small

    from poodle.flowtrain.model import UnsupervisedRaft

    torch.manual_seed(0)
    net = UnsupervisedRaft("small").eval()
    a, b = torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        ours = net(a, b, 3)
        ref = raft_small(weights=None)
        ref.load_state_dict(net.raft.state_dict())
        ref.eval()
        fw = ref(a * 2 - 1, b * 2 - 1, num_flow_updates=3)
        bw = ref(b * 2 - 1, a * 2 - 1, num_flow_updates=3)
    assert len(ours) == 3
    for i in range(3):
        assert torch.allclose(ours[i][:1], fw[i], atol=1e-4)
        assert torch.allclose(ours[i][1:], bw[i], atol=1e-4)


# ----------------------------------------------------------------------------------------------------- config


def test_shipped_recipes_load_and_are_not_pretraining_configs():
    names = shipped_configs("flow_train")
    assert {"flow_train_synthdrive_cpu", "flow_train_video_gpu"} <= set(names)
    assert not set(names) & set(shipped_configs("pretrain"))
    for name in names:
        load_flow_train_config(name)
    with pytest.raises(ConfigError, match="multiples of 8"):
        load_flow_train_config("flow_train_synthdrive_cpu", ["data.resolution=[64,128]"])
    with pytest.raises(ConfigError, match="photometric"):
        load_flow_train_config("flow_train_synthdrive_cpu", ["loss.census=0"])


def test_cli_errors_are_one_line(tmp_path, capsys):
    from poodle.cli import main

    assert main(["flow", "train", "--out", str(tmp_path / "r"), "--dataset", "folder"]) == 2
    assert "needs --data" in capsys.readouterr().err
    assert main(["flow", "train", "--out", str(tmp_path / "r"), "optim.lr=-1"]) == 2
    assert "optim.lr" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------- training


def _train(out, steps, extra=(), **kwargs):
    from poodle.flowtrain.train import build_flow_pair_source, train_flow

    cfg = load_flow_train_config("flow_train_synthdrive_cpu", [*TINY, *extra])
    return train_flow(cfg, out, build_flow_pair_source(cfg), stop_step=steps, **kwargs)


@pytest.mark.slow
def test_resume_is_exact_and_the_model_is_a_flow_source(tmp_path):
    torch.set_num_threads(1)
    straight = _train(tmp_path / "a", 4)
    _train(tmp_path / "b", 2)
    resumed = _train(tmp_path / "b", 4)
    assert resumed["step"] == 4
    for k, v in straight["raft"].state_dict().items():
        assert torch.equal(v, resumed["raft"].state_dict()[k]), k
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4 and '"census"' in lines[-1]
    assert (tmp_path / "b" / "tensorboard").is_dir()

    # The run folder (or its flow_model.pt) is a flow source for pretrain / prepare, loaded without pickles.
    from poodle.data.optical_flow import RaftFlow, build_flow_estimator, raft_size_of

    assert raft_size_of(tmp_path / "b") == "small"
    est = build_flow_estimator(FlowConfig(source="raft_small", weights=str(tmp_path / "b"), iters=2))
    assert isinstance(est, RaftFlow) and est.weights_path == tmp_path / "b" / "flow_model.pt"
    for k, v in est.raft.state_dict().items():
        assert torch.equal(v, resumed["raft"].state_dict()[k]), k
    a = torch.randint(0, 255, (1, 3, 128, 128), dtype=torch.uint8)
    fab, fba = est.bidirectional(a, a)
    assert fab.shape == (1, 2, 128, 128) and torch.isfinite(fab).all()

    # ... and a benchmark row next to zero flow.
    from poodle.cli.flow import _synthdrive_pairs, benchmark, format_table

    pairs = _synthdrive_pairs(1, (128, 128), 8, 0)
    rows = benchmark({"zero": None, "trained": est}, pairs)
    assert {"fl_all", "occ_agreement", "occ_iou"} <= rows[1].keys()
    assert rows[0]["occ_iou"] != rows[0]["occ_iou"] or rows[0]["occ_iou"] == 0  # zero flow predicts no occlusion
    assert "Fl-all" in format_table(rows)

    # A different recipe in the same folder is refused.
    with pytest.raises(TrainingError, match="different config"):
        _train(tmp_path / "b", 6, ["loss.smooth2=1.0"])


@pytest.mark.slow
def test_signal_saves_the_step_and_non_finite_loss_stops_unsaved(tmp_path, monkeypatch):
    import poodle.flowtrain.train as T

    torch.set_num_threads(1)
    real = T.flow_step_loss

    def sigterm_at_step_1(model, cfg, a, b, a_in, b_in, step):
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(model, cfg, a, b, a_in, b_in, step)

    monkeypatch.setattr(T, "flow_step_loss", sigterm_at_step_1)
    r = _train(tmp_path / "sig", 10)
    assert r["interrupted"] == signal.SIGTERM and r["step"] == 2
    assert load_checkpoint(tmp_path / "sig" / "last.pt")["step"] == 2

    def nan_at_step_2(model, cfg, a, b, a_in, b_in, step):
        out = real(model, cfg, a, b, a_in, b_in, step)
        if step >= 2:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(T, "flow_step_loss", nan_at_step_2)
    with pytest.raises(TrainingError, match="diverged.*holds step 2"):
        _train(tmp_path / "nan", 6)
    assert load_checkpoint(tmp_path / "nan" / "last.pt")["step"] == 2


@pytest.mark.slow
def test_selfsupervision_step_runs(tmp_path):
    torch.set_num_threads(1)
    r = _train(tmp_path / "ss", 1, ["loss.selfsup=0.3", "loss.selfsup_margin=16"])
    assert r["selfsup"] >= 0 and r["loss"] == r["loss"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_processes_gloo(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(HERE / "helpers" / "flow_ddp_worker.py"), str(out), "2", *TINY, "optim.batch_size=2"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["step"] == r1["step"] == 2
    for k, v in r0["weights"].items():
        assert torch.allclose(v, r1["weights"][k], atol=1e-6), k
    assert load_checkpoint(out / "last.pt")["world_size"] == 2
