"""The op-by-op roofline (poodle.engine.roofline): FLOPs agree with the FLOP model, bytes and time follow the
stated rules on ops with known answers."""

from __future__ import annotations

import pytest
import torch

from poodle.config import load_config
from poodle.engine.flops import step_flops
from poodle.engine.roofline import DeviceSpec, _RooflineMode, dense_loss_roofline, step_roofline

TOY = DeviceSpec("toy", bf16_flops=100e12, tf32_flops=50e12, fp32_flops=10e12, bandwidth=1e12)


def test_known_ops():
    a = torch.ones(256, 512)
    b = torch.ones(512, 1024)
    mode = _RooflineMode(TOY)
    with mode:
        c = a @ b  # fp32 matmul: 2*256*512*1024 FLOPs at the fp32 rate
        d = c + 1.0  # elementwise: reads c, writes d
        d.view(1024, 256)  # a view: no kernel, not counted
        a.bfloat16() @ b.bfloat16()  # the conversions count as bytes; the bf16 matmul runs at the bf16 rate
    ops = mode.ops
    flops = 2 * 256 * 512 * 1024
    assert ops["mm"].calls == 2 and ops["mm"].flops == 2 * flops
    fp32_bytes = 4 * (256 * 512 + 512 * 1024 + 256 * 1024)
    bf16_bytes = fp32_bytes // 2
    assert ops["mm"].bytes == fp32_bytes + bf16_bytes
    assert ops["mm"].seconds == pytest.approx(flops / 10e12 + max(flops / 100e12, bf16_bytes / 1e12))
    assert ops["add"].bytes == 2 * 4 * 256 * 1024 and ops["add"].flops == 0
    assert ops["add"].seconds == pytest.approx(2 * 4 * 256 * 1024 / 1e12)
    assert "view" not in ops and "t" not in ops


def test_step_flops_match_the_flop_model():
    cfg = load_config("poodle_bdd100k", ["model.arch=resnet18", "data.resolution=[64,128]", "subcrops.size=32",
                                         "model.proj_hidden_dim=64", "model.proj_out_dim=32"])  # fmt: skip
    roof = step_roofline(cfg, 2)
    # the FLOP model leaves out only the dense augmentation's affine_grid bmms (tests/test_flops.py)
    assert roof.flops == pytest.approx(2 * step_flops(cfg).total, rel=1e-6)
    assert roof.kernels > 100 and roof.bytes > 0
    assert roof.matmul_seconds < roof.seconds
    assert 0 < roof.mfu_bound() < 1
    assert "heaviest ops" in roof.summary()
    loss = dense_loss_roofline(cfg, 2)  # a part of the step: no convolutions, fewer bytes
    assert loss.flops < 0.01 * roof.flops and 0 < loss.bytes < roof.bytes and loss.seconds < roof.seconds
