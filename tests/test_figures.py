"""Readout figures explain themselves: the PCA figure shows per-image structure where the shared PCA is flat, the
flow legend's wheel uses the flow panels' own colour code, and every figure carries text around its panels."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.utils import flow_to_image

from poodle.data.classes import BDD100K_CLASSES, BDD100K_PALETTE
from poodle.evaluation.figures import pca_rgb, write_figures
from poodle.figure_layout import flow_wheel


def _features(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    loud = 100.0 * torch.randn(16, 8, 12, generator=g)  # dominates the shared PCA
    quiet = torch.zeros(16, 8, 12)
    quiet[:, :, 6:] = 0.01 * torch.randn(16, 1, 1, generator=g)  # a left/right split, tiny on that scale
    return [loud, quiet]


def _spread(rgb: np.ndarray) -> int:
    """Largest per-channel range of an (h, w, 3) image: 0 = one flat colour."""
    return int(np.ptp(rgb.reshape(-1, 3).astype(int), axis=0).max())


def test_per_image_pca_shows_what_the_shared_pca_flattens():
    feats = _features(0)
    shared, (share,) = pca_rgb(feats, shared=True)
    own, own_shares = pca_rgb(feats, shared=False)
    assert _spread(shared[1]) <= 2  # the quiet image is one flat colour on the shared scale
    assert _spread(own[1]) > 200  # ... and shows its left/right split when fitted on its own
    assert share == sorted(share, reverse=True) and 0 < sum(share) <= 1 + 1e-6
    assert own_shares[1][0] > 0.99  # one direction explains the quiet image


def test_flow_wheel_uses_the_flow_panels_colour_code():
    wheel = flow_wheel(65)
    assert (wheel[32, 32] == 255).all()  # still = white
    for dx, dy, (row, col) in [(1.0, 0.0, (32, 64)), (0.0, 1.0, (64, 32)), (-1.0, 0.0, (32, 0))]:
        uniform = torch.zeros(2, 4, 4)
        uniform[0, :, :3], uniform[1, :, :3] = dx, dy  # the still column sets the scale's zero
        expected = flow_to_image(uniform)[:, 0, 0].numpy()
        assert np.abs(wheel[row, col].astype(int) - expected.astype(int)).max() <= 12


def test_readout_figures_have_title_headers_and_legend(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (32, 64, 3), dtype=np.uint8)
    gt = np.zeros((32, 64), np.int64)
    gt[:, 32:] = 13  # car
    gt[0] = 255  # an ignored row
    pred = np.full((32, 64), 10)  # sky
    paths = write_figures(tmp_path, [(image, gt, pred)] * 2, _features(1), BDD100K_CLASSES, BDD100K_PALETTE,
                          [0.5] + [None] * 18, context="test")  # fmt: skip
    sizes = {k: Image.open(v).size for k, v in paths.items()}
    # Three 64-px columns, plus margins; the text above and below makes each figure taller than its panels.
    assert sizes["predictions"][0] >= 3 * 64 and sizes["predictions"][1] > 2 * 32 + 60
    assert sizes["features_pca"][0] >= 3 * 64 and sizes["features_pca"][1] > 2 * 32 + 60
    assert sizes["per_class_iou"][1] > 19 * 16
