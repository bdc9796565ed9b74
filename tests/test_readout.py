"""Readout heads, sliding-window inference, the readout config and a short linear readout that beats chance."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from poodle.config import ConfigError, shipped_configs
from poodle.evaluation.config import load_readout_config
from poodle.evaluation.inference import infer, window_starts
from poodle.evaluation.linear import LinearHead
from poodle.evaluation.upernet import UperNetHead
from test_segmentation_data import ramp, write_mask


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


# ---------------------------------------------------------------------- mask check before training, precise BN


def _bdd_tiny(root, n_train=4, n_val=2, size=(32, 64)):
    """BDD100K layout, RGB noise images and masks of every class id."""
    for split, names in (("train", range(n_train)), ("val", range(n_val))):
        for i in names:
            name = f"{split[0]}{i}"
            rgb = np.random.default_rng(i).integers(0, 256, (*size, 3), dtype=np.uint8)
            (root / "images" / "10k" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).save(root / "images" / "10k" / split / f"{name}.jpg")
            write_mask(root / "labels" / "sem_seg" / "masks" / split / f"{name}.png", ramp(0, 18, size))
    return root


TINY = ["crop_size=[32,64]", "base_size=32", "scale_range=[1.0,1.0]", "batch_size=2", "workers=0", "device=cpu",
        "figures=0", "log_every=1"]  # fmt: skip


def test_eval_cli_refuses_a_bad_val_mask_before_training(tmp_path, capsys, monkeypatch):
    import poodle.evaluation.readout as readout
    from poodle.cli import main

    root = _bdd_tiny(tmp_path / "bdd")
    bad = ramp(0, 18, (32, 64))
    bad[5, 5] = 37
    write_mask(root / "labels" / "sem_seg" / "masks" / "val" / "v1.png", bad)

    def no_training(*args, **kwargs):
        raise AssertionError("the readout started before the masks were checked")

    monkeypatch.setattr(readout, "build_model", no_training)
    rc = main(["eval", "linear", "--dataset", "bdd100k", "--data", str(root), "--weights", "random", "--arch",
               "resnet18", "--out", str(tmp_path / "ro"), "--no-progress", *TINY])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "v1.png" in err and "37 (1 px)" in err and "0-18 or 255 (ignore)" in err


def _bn_layers(module):
    from torch.nn.modules.batchnorm import _BatchNorm

    return [m for m in module.modules() if isinstance(m, _BatchNorm)]


def _pooled(values: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and unbiased variance over every pixel of every (1, C, H, W) map, in float64."""
    x = torch.cat([v.double().transpose(0, 1).reshape(v.shape[1], -1) for v in values], dim=1)
    return x.mean(1), x.var(1, unbiased=True)


def _poodle_like_backbone():
    from poodle.evaluation.backbones import FeatureBackbone
    from poodle.model.decoder import SpatialDecoder
    from poodle.model.encoder import ResNetEncoder

    torch.manual_seed(0)
    encoder = ResNetEncoder("resnet18")
    return FeatureBackbone(encoder, SpatialDecoder(encoder.channels), source="poodle")


BN_IMAGES = [torch.randint(0, 256, size, generator=torch.Generator().manual_seed(i), dtype=torch.uint8)
             for i, size in enumerate([(3, 64, 64), (3, 32, 96), (3, 64, 96)])]  # fmt: skip


def test_recompute_bn_statistics_are_exact_and_change_no_weight():
    import copy

    import torch.nn.functional as F

    from poodle.data.augment import normalize
    from poodle.evaluation.readout import recompute_bn_statistics

    bb = _poodle_like_backbone()
    for m in _bn_layers(bb):  # deliberately wrong statistics, e.g. polluted by subcrop passes
        m.running_mean.fill_(100.0)
        m.running_var.fill_(100.0)
    weights = copy.deepcopy({k: v for k, v in bb.named_parameters()})
    done = recompute_bn_statistics(bb, BN_IMAGES, with_sdm=True, device=torch.device("cpu"))
    assert done == {"images": 3, "layers": len(_bn_layers(bb))}
    assert len(_bn_layers(bb.decoder)) > 0  # the SDM's BatchNorm layers are part of it
    for m in _bn_layers(bb):
        assert float(m.running_mean.abs().max()) < 50 and int(m.num_batches_tracked) == 3
    for k, v in bb.named_parameters():
        assert torch.equal(v, weights[k]) and not v.requires_grad, k
    assert not any(m.training for m in bb.modules())  # back in eval mode: the readout stays frozen

    # Computed directly on the same images: bn1's input is conv1(x); layer1[0].bn1's input goes through bn1 in
    # train mode (batch statistics of each image, as in the pass).
    e = bb.encoder
    with torch.no_grad():
        xs = [normalize(img[None].float() / 255) for img in BN_IMAGES]
        c1 = [e.conv1(x) for x in xs]
        bn1 = [F.batch_norm(c, None, None, e.bn1.weight, e.bn1.bias, training=True, eps=e.bn1.eps) for c in c1]
        deeper = [e.layer1[0].conv1(e.maxpool(F.relu(b))) for b in bn1]
    for bn, inputs in ((e.bn1, c1), (e.layer1[0].bn1, deeper)):
        mean, var = _pooled(inputs)
        assert torch.allclose(bn.running_mean.double(), mean, atol=1e-4, rtol=1e-4)
        assert torch.allclose(bn.running_var.double(), var, atol=1e-4, rtol=1e-4)


def _ddp_bn_worker(rank: int, world: int, store: str, out: str) -> None:
    import torch.distributed as dist

    from poodle.engine.distributed import DistInfo
    from poodle.evaluation.readout import recompute_bn_statistics

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        bb = _poodle_like_backbone()
        recompute_bn_statistics(bb, BN_IMAGES[rank::world], True, torch.device("cpu"), DistInfo(rank, rank, world))
        torch.save({k: v for k, v in bb.state_dict().items() if "running" in k}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_recompute_bn_under_ddp_equals_one_process(tmp_path):
    import torch.multiprocessing as mp

    from poodle.evaluation.readout import recompute_bn_statistics

    mp.spawn(_ddp_bn_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    ref = _poodle_like_backbone()
    recompute_bn_statistics(ref, BN_IMAGES, True, torch.device("cpu"))
    for k, v in r0.items():
        assert torch.equal(v, r1[k]), k  # all-reduced sums: the same statistics on every rank
        assert torch.allclose(v, ref.state_dict()[k], atol=1e-5, rtol=1e-5), k  # ... those of all the images


@pytest.mark.parametrize("recompute", [0, 3])
def test_readout_recompute_bn_option(tmp_path, monkeypatch, recompute):
    import poodle.evaluation.readout as readout

    root = _bdd_tiny(tmp_path / "bdd")
    built = []
    orig = readout.build_model
    monkeypatch.setattr(readout, "build_model", lambda *a, **k: built.append(orig(*a, **k)) or built[-1])
    cfg = load_readout_config("readout_synthdrive_cpu", [*TINY, f"recompute_bn={recompute}"])
    res = readout.run_readout("random", "bdd100k", root, cfg, tmp_path / "ro", steps=1, arch="resnet18",
                              progress=False)  # fmt: skip
    layers = _bn_layers(built[0].backbone)
    changed = [not torch.equal(m.running_mean, torch.zeros_like(m.running_mean)) for m in layers]
    saved = json.loads((tmp_path / "ro" / "results.json").read_text())
    assert saved["config"]["recompute_bn"] == recompute
    assert saved["data_check"]["masks_checked"] == {"train": 4, "val": 2}
    if recompute == 0:  # the default: the frozen protocol of the paper, statistics as loaded (random init: 0 / 1)
        assert not any(changed) and saved["recompute_bn"] == {"images": 0}
    else:
        assert all(changed) and saved["recompute_bn"]["images"] == 3 and res["recompute_bn"]["layers"] == len(layers)


def test_recompute_bn_statistics_from_batches():
    """Batches count their images; the first BN layer (nothing normalised above it) gets the same statistics from one
    batch as from the images one by one, a deeper one differs (the layers above used the batch's statistics)."""
    from poodle.evaluation.readout import recompute_bn_statistics

    images = [img[:, :32, :64] for img in BN_IMAGES]  # one size, so they stack into a batch
    single, batched = _poodle_like_backbone(), _poodle_like_backbone()
    batched.load_state_dict(single.state_dict())
    recompute_bn_statistics(single, images, with_sdm=True, device=torch.device("cpu"))
    done = recompute_bn_statistics(batched, [torch.stack(images)], with_sdm=True, device=torch.device("cpu"))
    assert done["images"] == len(images)
    a, b = single.encoder, batched.encoder
    assert torch.allclose(a.bn1.running_mean, b.bn1.running_mean, atol=1e-5)
    assert torch.allclose(a.bn1.running_var, b.bn1.running_var, rtol=1e-5)
    assert not torch.allclose(a.layer1[0].bn1.running_var, b.layer1[0].bn1.running_var, rtol=1e-3)


def test_readout_class_weight_option(tmp_path, monkeypatch):
    """class_weight=median_frequency passes the train masks' median-frequency weights to the head's loss."""
    import torch.nn.functional as F

    import poodle.evaluation.readout as readout
    from poodle.data.class_stats import median_frequency_weights
    from poodle.data.segmentation import check_segmentation_data

    root = _bdd_tiny(tmp_path / "bdd")
    seen = []
    orig = F.cross_entropy
    monkeypatch.setattr(readout.F, "cross_entropy", lambda *a, **k: seen.append(k.get("weight")) or orig(*a, **k))
    cfg = load_readout_config("readout_synthdrive_cpu", [*TINY, "class_weight=median_frequency"])
    readout.run_readout("random", "bdd100k", root, cfg, tmp_path / "ro", steps=1, arch="resnet18", progress=False)
    check = check_segmentation_data("bdd100k", root, ("train",), "auto", workers=0, progress=False)
    want = median_frequency_weights(check.histograms["train"], len(check.info.classes))
    assert seen and torch.allclose(seen[0], torch.tensor(want, dtype=torch.float32))
    assert (want > 0).sum() >= 2 and json.loads((tmp_path / "ro" / "results.json").read_text())["config"][
        "class_weight"] == "median_frequency"  # fmt: skip
    seen.clear()
    cfg = load_readout_config("readout_synthdrive_cpu", TINY)  # the default: the paper's unweighted loss
    readout.run_readout("random", "bdd100k", root, cfg, tmp_path / "ro2", steps=1, arch="resnet18", progress=False)
    assert seen == [None]
    with pytest.raises(Exception, match="class_weight"):
        load_readout_config("readout_synthdrive_cpu", ["class_weight=inverse"])
