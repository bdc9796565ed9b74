"""Readout heads, sliding-window inference, the readout config and a short linear readout that beats chance."""

import json

import numpy as np
import pytest
import torch

from poodle.config import ConfigError, shipped_configs
from poodle.evaluation.config import load_readout_config
from poodle.evaluation.inference import infer, window_starts
from poodle.evaluation.linear import LinearHead
from poodle.evaluation.upernet import UperNetHead


def test_shipped_recipes_load_and_overrides_are_typed():
    names = shipped_configs("readout")
    assert {"readout_bdd100k", "readout_cityscapes", "readout_ade20k", "readout_wtsem", "readout_synthdrive_cpu",
            "upernet_bdd100k", "upernet_ade20k"} <= set(names)  # fmt: skip
    assert not set(names) & set(shipped_configs())  # pretraining configs stay separate
    for name in names:
        assert load_readout_config(name).name == name
    bdd = load_readout_config("readout_bdd100k")
    assert (bdd.steps, bdd.batch_size, bdd.lr, bdd.crop_size, bdd.base_size) == (60000, 16, 0.02, (512, 1024), 1024)
    cs = load_readout_config("readout_cityscapes")
    assert (cs.steps, cs.batch_size, cs.lr) == (40000, 8, 0.01)
    assert load_readout_config("readout_ade20k").crop_size == (512, 512)
    cfg = load_readout_config("readout_bdd100k", ["steps=10", "crop_size=[32,64]", "kernel=3"])
    assert cfg.steps == 10 and cfg.crop_size == (32, 64) and cfg.kernel == 3
    with pytest.raises(ConfigError, match="Did you mean 'steps'"):
        load_readout_config("readout_bdd100k", ["stepz=1"])
    with pytest.raises(ConfigError, match="finetune=true needs head=upernet"):
        load_readout_config("readout_bdd100k", ["finetune=true"])


def test_head_shapes():
    x = torch.randn(2, 64, 8, 16)
    assert LinearHead(64, 19)(x).shape == (2, 19, 8, 16)
    assert LinearHead(64, 19, kernel=3, dilation=6, bn=False)(x).shape == (2, 19, 8, 16)
    feats = {"layer1": torch.randn(2, 8, 16, 32), "layer2": torch.randn(2, 16, 8, 16),
             "layer3": torch.randn(2, 32, 4, 8), "layer4": torch.randn(2, 64, 2, 4)}  # fmt: skip
    assert UperNetHead((8, 16, 32, 64), 5, channels=16)(feats).shape == (2, 5, 16, 32)


def test_window_starts_cover_the_image():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(10, 4, 4) == [0, 4, 6]
    assert window_starts(3, 4, 2) == [0]


@pytest.mark.parametrize("stride", [(16, 32), (10, 20)])
def test_slide_equals_whole_for_a_pixelwise_model(stride):
    # A per-pixel model is translation-equivariant with no context: every window gives the same logits for a pixel,
    # so their average equals whole-image inference (exact tiling and overlapping windows alike).
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 7, 1)
    x = torch.randn(1, 3, 48, 96)
    whole = infer(model, x, "whole", (16, 32), stride)
    slide = infer(model, x, "slide", (16, 32), stride)
    assert torch.allclose(whole, slide, atol=1e-5)
    small = torch.randn(1, 3, 10, 20)  # smaller than the window: padded, then cropped back
    assert infer(model, small, "slide", (16, 32), stride).shape == (1, 7, 10, 20)


@pytest.fixture(scope="module")
def tiny_synthdrive(tmp_path_factory):
    from poodle.data.synthdrive import generate_dataset

    root = tmp_path_factory.mktemp("sd") / "synthdrive"
    generate_dataset(root, preset="small", seed=0, resolution=(64, 128), train_videos=1, val_videos=1, seconds=1.0,
                     flow_pairs=0, train_images=32, val_images=8, progress=False)  # fmt: skip
    return root


@pytest.mark.slow
def test_linear_readout_beats_the_majority_class(tiny_synthdrive, tmp_path):
    from poodle.data.segmentation import build_segmentation_dataset
    from poodle.evaluation.readout import run_readout

    cfg = load_readout_config("readout_synthdrive_cpu", ["crop_size=[48,96]", "base_size=64", "scale_range=[0.75,1.0]",
                                                         "figures=2", "log_every=20"])  # fmt: skip
    torch.manual_seed(0)
    results = run_readout("random", "synthdrive", tiny_synthdrive, cfg, tmp_path / "ro", steps=60, arch="resnet18",
                          progress=False)  # fmt: skip
    # Chance level: always predicting the most frequent val class.
    val = build_segmentation_dataset("synthdrive", tiny_synthdrive, "val")
    masks = np.concatenate([val.load(i)[1].ravel() for i in range(len(val))])
    counts = np.bincount(masks[masks != 255], minlength=19)
    majority = counts.max() / counts.sum()
    m = results["metrics"]
    assert m["aacc"] > majority + 0.05, (m["aacc"], majority)
    assert m["miou"] > 1.0 / 19 * majority + 0.02
    saved = json.loads((tmp_path / "ro" / "results.json").read_text())
    assert set(saved["group_metrics"]["mIoU"]) == {"All", "Small", "Large", "Rare", "Common"}
    for name in ("table.md", "head.pt", "class_stats.json", "figures/predictions.png", "figures/features_pca.png",
                 "figures/per_class_iou.png"):  # fmt: skip
        assert (tmp_path / "ro" / name).is_file(), name


@pytest.mark.slow
@pytest.mark.parametrize("finetune", [False, True])
def test_upernet_readout_runs_frozen_and_finetuned(tiny_synthdrive, tmp_path, finetune):
    from poodle.evaluation.readout import run_readout

    cfg = load_readout_config("upernet_synthdrive_cpu", ["crop_size=[64,128]", "base_size=64", "scale_range=[1.0,1.0]",
                                                         "figures=0", f"finetune={str(finetune).lower()}"])  # fmt: skip
    torch.manual_seed(0)
    results = run_readout("random", "synthdrive", tiny_synthdrive, cfg, tmp_path / "up", steps=3, arch="resnet18",
                          progress=False)  # fmt: skip
    assert 0.0 <= results["metrics"]["aacc"] <= 1.0
    assert (tmp_path / "up" / "results.json").is_file()
