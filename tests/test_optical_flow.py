"""Optical flow estimators (spec 2.6, decision 14): DIS accuracy, RAFT plumbing (random init), weights handling,
fallback, EPE statistics and `poodle flow`. No downloads: RAFT is random-initialised or loaded from a tmp file."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from poodle.cli import main
from poodle.config import FlowConfig
from poodle.data.optical_flow import (
    DISFlow,
    EPEMeter,
    FlowWeightsError,
    GroundTruthFlow,
    RaftFlow,
    build_flow_estimator,
    endpoint_error,
    raft_weights_path,
)

SHIFT = (3, -2)  # (dx, dy): content moves 3 px right and 2 px up


def _texture(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(1, 3, h, w) uint8 smooth random texture (blurred noise: DIS needs gradients at several scales)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, h // 4, w // 4, generator=g)
    x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False)
    x = x + 0.15 * torch.rand(1, 3, h, w, generator=g)
    x = (x - x.min()) / (x.max() - x.min())
    return (x * 255).round().to(torch.uint8)


def _translated_pair(h: int = 96, w: int = 128, shift=SHIFT, seed: int = 0):
    """Frames a, b with b(y, x) = a(y - dy, x - dx): the true flow a->b is the constant `shift`."""
    dx, dy = shift
    big = _texture(h + 16, w + 16, seed)
    a = big[..., 8 : 8 + h, 8 : 8 + w]
    b = big[..., 8 - dy : 8 - dy + h, 8 - dx : 8 - dx + w]
    return a.contiguous(), b.contiguous()


@pytest.fixture(scope="module")
def raft_small_random():
    torch.manual_seed(0)
    return RaftFlow("small", weights=None, iters=2)


# ---------------------------------------------------------------------------------------------------- DIS


def test_dis_recovers_translation():
    a, b = _translated_pair()
    flow = DISFlow()(a, b)
    assert flow.shape == (1, 2, 96, 128) and flow.dtype == torch.float32
    interior = flow[0, :, 16:-16, 16:-16]
    err = (interior - torch.tensor(SHIFT, dtype=torch.float32).view(2, 1, 1)).abs()
    assert err.max() < 0.5, err.max()


def test_dis_float_input_and_bidirectional_opposite():
    a, b = _translated_pair()
    fa, fb = a.float() / 255, b.float() / 255  # [0, 1] float input gives the same flow as uint8
    est = DISFlow()
    ab, ba = est.bidirectional(fa, fb)
    assert torch.allclose(ab, est(a, b), atol=1e-4)
    interior = (slice(None), slice(None), slice(16, -16), slice(16, -16))
    assert (ab[interior] + ba[interior]).abs().max() < 0.5
    assert (ba[interior].mean((0, 2, 3)) - torch.tensor([-3.0, 2.0])).abs().max() < 0.2


# ---------------------------------------------------------------------------------------------------- RAFT


def test_raft_shapes_padding_no_grad_and_batched_bidirectional(raft_small_random):
    est = raft_small_random
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, 256, (2, 3, 129, 131), dtype=torch.uint8, generator=g)  # odd sizes: padded to 136x136
    b = torch.randint(0, 256, (2, 3, 129, 131), dtype=torch.uint8, generator=g)
    flow = est(a, b)
    assert flow.shape == (2, 2, 129, 131) and flow.dtype == torch.float32
    assert not flow.requires_grad
    assert all(not p.requires_grad for p in est.parameters())
    ab, ba = est.bidirectional(a, b)
    # One batched call of both orderings equals two separate calls (each frame is encoded once).
    assert torch.allclose(ab, flow, atol=1e-5)
    assert torch.allclose(ba, est(b, a), atol=1e-5)


def test_raft_final_flow_matches_torchvision_forward(raft_small_random):
    """Our final-iteration-only loop is torchvision's RAFT.forward()[-1], with the [-1, 1] input scaling."""
    est = raft_small_random
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(1, 3, 128, 136, generator=g), torch.rand(1, 3, 128, 136, generator=g)
    with torch.no_grad():
        ref = est.raft(a * 2 - 1, b * 2 - 1, num_flow_updates=est.iters)[-1]
    assert torch.allclose(est(a, b), ref, atol=1e-5)


def test_raft_stays_in_eval_mode_inside_a_training_parent():
    """The release's defect (spec 11): a parent's .train() put RAFT's BatchNorm in train mode and its stats drifted.
    raft_large is used because its context encoder has BatchNorm (raft_small has none)."""
    torch.manual_seed(0)
    est = RaftFlow("large", weights=None, iters=1)
    parent = nn.ModuleDict({"head": nn.Conv2d(3, 3, 1), "flow": est})
    parent.train()
    assert parent["head"].training
    assert not est.training and all(not m.training for m in est.modules())
    bns = [m for m in est.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns
    before = [m.running_mean.clone() for m in bns]
    est(torch.rand(2, 3, 128, 128), torch.rand(2, 3, 128, 128))
    assert all(torch.equal(x, m.running_mean) for x, m in zip(before, bns))  # no BatchNorm statistics drift
    parent.train(True)
    parent.eval()
    parent.train()
    assert not est.training


def test_raft_lower_resolution_rescales_vectors(monkeypatch, raft_small_random):
    """Run at half resolution: the low-resolution flow is upsampled and its vectors doubled."""
    import poodle.data.optical_flow as of

    seen = {}

    def fake_final_flow(raft, x, iters, shared):  # a constant 1 px flow at whatever resolution RAFT sees
        seen["size"] = tuple(x.shape[-2:])
        out = torch.zeros(x.shape[0] // (1 if shared else 2), 2, *x.shape[-2:])
        out[:, 0], out[:, 1] = 1.0, -0.5
        return out

    monkeypatch.setattr(of, "_raft_final_flow", fake_final_flow)
    est = RaftFlow("small", weights=None, iters=1, resolution=(128, 128))
    flow = est(torch.rand(1, 3, 256, 256), torch.rand(1, 3, 256, 256))
    assert seen["size"] == (128, 128)
    assert flow.shape == (1, 2, 256, 256)
    assert torch.allclose(flow[0, 0], torch.full((256, 256), 2.0)) and torch.allclose(
        flow[0, 1], torch.full((256, 256), -1.0)
    )


def test_raft_loads_local_weights_file(tmp_path, raft_small_random):
    path = tmp_path / "raft_small.pth"
    torch.save({"module." + k: v for k, v in raft_small_random.raft.state_dict().items()}, path)  # DDP-style keys
    est = RaftFlow("small", weights=str(path), iters=2)
    a, b = torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 128)
    assert torch.allclose(est(a, b), raft_small_random(a, b), atol=1e-5)
    bad = tmp_path / "bad.pth"
    torch.save({"not_raft": torch.zeros(1)}, bad)
    with pytest.raises(FlowWeightsError, match="not a torchvision RAFT state dict"):
        RaftFlow("small", weights=str(bad))


def test_missing_weights_error_names_hub_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "raft_large_C_T_V1-22a6c225.pth"  # raft-things
    assert raft_weights_path("large") == expected
    assert raft_weights_path("small").name == "raft_small_C_T_V2-01064c6d.pth"
    with pytest.raises(FlowWeightsError) as e:
        RaftFlow("large")
    assert str(expected) in str(e.value) and "--weights" in str(e.value)
    with pytest.raises(FlowWeightsError, match="not found"):
        RaftFlow("large", weights=str(tmp_path / "nope.pth"))


# ---------------------------------------------------------------------------------------------------- factory


def test_build_flow_estimator_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FlowWeightsError):
        build_flow_estimator(FlowConfig(source="raft_large"), "cpu")
    with pytest.warns(UserWarning, match="falling back to DIS"):
        est = build_flow_estimator(FlowConfig(source="raft_small"), "cpu", fallback=True)
    assert isinstance(est, DISFlow)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(build_flow_estimator(FlowConfig(source="dis"), "cpu"), DISFlow)
    gt = build_flow_estimator(FlowConfig(source="gt"), "cpu")
    assert isinstance(gt, GroundTruthFlow)
    with pytest.raises(RuntimeError, match="ground-truth flow comes with SynthDrive"):
        gt.bidirectional(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


# ---------------------------------------------------------------------------------------------------- EPE


def test_epe_known_values():
    gt = torch.zeros(1, 2, 2, 2)
    pred = torch.zeros(1, 2, 2, 2)
    pred[0, 0, 0, 0], pred[0, 1, 0, 0] = 3.0, 4.0  # EPE 5 at (0, 0)
    pred[0, 0, 1, 1] = 1.0  # EPE 1 at (1, 1)
    assert torch.allclose(endpoint_error(pred, gt), torch.tensor([[[5.0, 0.0], [0.0, 1.0]]]))
    meter = EPEMeter()
    occluded = torch.tensor([[[True, False], [False, False]]])
    meter.update(pred, gt, occluded)
    meter.update(torch.full((1, 2, 2, 2), 0.6), torch.zeros(1, 2, 2, 2))  # EPE 0.6*sqrt(2) everywhere, no mask
    s = meter.summary()
    e2 = 0.6 * 2**0.5
    assert s["epe"] == pytest.approx((6.0 + 4 * e2) / 8)
    assert s["epe_noc"] == pytest.approx((1.0 + 4 * e2) / 7)
    assert s["px3"] == pytest.approx(100 / 8)
    assert s["pairs"] == 2 and s["excluded"] == 0
    # `valid` drops pixels from every statistic (the benchmark drops those whose true target leaves the frame).
    meter = EPEMeter()
    meter.update(pred, gt, occluded, valid=torch.tensor([[[False, True], [True, True]]]))
    s = meter.summary()
    assert s["epe"] == pytest.approx(1 / 3) and s["epe_noc"] == pytest.approx(1 / 3)
    assert s["px3"] == 0 and s["excluded"] == pytest.approx(25)


def test_epe_of_dis_on_translation_is_small():
    a, b = _translated_pair(seed=3)
    gt = torch.tensor(SHIFT, dtype=torch.float32).view(1, 2, 1, 1).expand(1, 2, 96, 128)
    meter = EPEMeter()
    meter.update(DISFlow()(a, b)[..., 16:-16, 16:-16], gt[..., 16:-16, 16:-16])
    assert meter.summary()["epe"] < 0.3


def test_benchmark_rows_on_constructed_pairs():
    from poodle.cli.flow import benchmark, format_table

    a, b = _translated_pair()
    fab = torch.tensor(SHIFT, dtype=torch.float32).view(1, 2, 1, 1).expand(1, 2, 96, 128).contiguous()
    no_occ = torch.zeros(1, 96, 128, dtype=torch.bool)
    pair = {"a": a, "b": b, "flow_ab": fab, "flow_ba": -fab, "occ_ab": no_occ, "occ_ba": no_occ}
    rows = benchmark({"zero": None, "dis": DISFlow()}, [pair])
    assert rows[0]["epe"] == pytest.approx(13**0.5, rel=1e-5)  # |(3, -2)|
    assert rows[1]["epe"] < 1.0 and rows[1]["pairs_per_s"] > 0
    table = format_table(rows)
    assert sum(line.startswith("|") for line in table.splitlines()) == 4 and "| dis |" in table


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_flow_frames_writes_png(tmp_path, capsys):
    a, b = _translated_pair()
    pa, pb = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(a[0].permute(1, 2, 0).numpy()).save(pa)
    Image.fromarray(b[0].permute(1, 2, 0).numpy()).save(pb)
    out = tmp_path / "out"
    rc = main(["flow", "--frames", str(pa), str(pb), "--backend", "dis", "--out", str(out)])
    assert rc == 0
    png = np.asarray(Image.open(out / "flow.png"))
    assert png.shape == (96, 4 * 128, 3)
    flows = np.load(out / "flow.npz")
    assert flows["flow_ab"].shape == (2, 96, 128)
    assert abs(float(np.median(flows["flow_ab"][0])) - 3.0) < 0.3
    text = capsys.readouterr().out
    assert "|flow a->b|" in text and "occluded" in text


def test_cli_flow_bad_input_is_one_line_error(tmp_path, capsys):
    rc = main(["flow", "--frames", str(tmp_path / "x.png"), str(tmp_path / "y.png"), "--out", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("poodle flow: error: --frames: cannot read image") and "\n" not in err


def test_cli_flow_benchmark_synthdrive(capsys):
    rc = main(["flow", "--benchmark-synthdrive", "--pairs", "1", "--resolution", "64x128", "--dt", "2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| zero flow (reference) |" in out and "| dis |" in out
    dis_row = next(line for line in out.splitlines() if line.startswith("| dis |"))
    zero_row = next(line for line in out.splitlines() if line.startswith("| zero flow"))
    assert float(dis_row.split("|")[3]) < float(zero_row.split("|")[3])  # DIS beats zero flow on visible pixels
    assert main(["flow", "--benchmark-synthdrive", "--resolution", "60x128"]) == 2


def test_cli_flow_video_pair(tmp_path, capsys):
    import av

    path = tmp_path / "clip.mp4"
    big = _texture(128 + 32, 160 + 32, seed=5)[0].permute(1, 2, 0).numpy()
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = 160, 128, "yuv420p"
        stream.options = {"qscale": "2"}
        for i in range(6):  # content moves 2 px right per frame
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(big[16:144, 16 - 2 * i : 176 - 2 * i]), "rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    out = tmp_path / "out"
    assert main(["flow", "--video", str(path), "--t", "1", "--dt", "2", "--backend", "dis", "--out", str(out)]) == 0
    flow_ab = np.load(out / "flow.npz")["flow_ab"]
    assert abs(float(np.median(flow_ab[0, 16:-16, 16:-16])) - 4.0) < 0.5
    assert "frames 1 and 3" in capsys.readouterr().out
    assert main(["flow", "--video", str(path), "--t", "4", "--dt", "15", "--out", str(out)]) == 2
