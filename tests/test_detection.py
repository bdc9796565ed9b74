"""The detection readout: C4 / FPN Faster R-CNN on a frozen trunk, COCO AP against hand-computed answers, the training
schedule and batches, and a tiny end-to-end run (CLI, results.json, table, figure) with an exact resume."""

import argparse
import json
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from poodle.cli import UserError
from poodle.engine.distributed import DistInfo
from poodle.evaluation.backbones import load_backbone
from poodle.evaluation.detection import (
    DetectionError,
    StepBatches,
    build_detector,
    coco_evaluate,
    freeze_batchnorm,
    frozen_trunk,
    lr_factor,
    milestone_steps,
    run_detection,
    training_target,
)
from poodle.evaluation.detection_config import load_detection_config

pytestmark = pytest.mark.usefixtures("one_thread")

# Small enough for a CPU test: 64x96 images kept at their size, few RoIs and proposals.
TINY = ["min_size=64", "max_size=128", "box_batch_size_per_image=32", "rpn_post_nms_top_n_train=64",
        "rpn_post_nms_top_n_test=32", "rpn_pre_nms_top_n_test=200", "device=cpu", "workers=0"]  # fmt: skip
CLASSES = ["pedestrian", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle", "traffic light",
           "traffic sign"]  # fmt: skip


def _detector(head: str, *overrides: str):
    cfg = load_detection_config("detection_synthdrive_cpu", [f"head={head}", *TINY, *overrides])
    torch.manual_seed(0)
    return build_detector(load_backbone("random", arch="resnet18", dilated=False, keep_decoder=False), cfg, 11), cfg


def test_freeze_batchnorm_keeps_statistics_and_eps():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, eps=1e-3), nn.Sequential(nn.BatchNorm2d(8)))
    for bn in (net[1], net[2][0]):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.normal_()
        bn.bias.data.normal_()
    x = torch.randn(2, 3, 9, 9)
    ref = net.eval()(x)
    assert freeze_batchnorm(net) == 2
    assert isinstance(net[1], FrozenBatchNorm2d) and net[1].eps == 1e-3 and net[2][0].eps == 1e-5
    torch.testing.assert_close(net(x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("head", ["c4", "fpn"])
def test_detector_trains_on_a_frozen_trunk(head):
    model, cfg = _detector(head)
    trunk = frozen_trunk(model)
    assert not any(p.requires_grad for p in trunk.parameters())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # every BN frozen (trunk and res5)
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in trunk.modules()) >= 10
    if head == "c4":
        assert model.backbone.out_channels == 256 and not hasattr(model.backbone, "layer4")  # res4 of a ResNet-18
        assert not any(p.requires_grad for p in model.roi_heads.box_head.parameters())  # c4_train_res5=false
        assert model.roi_heads.box_predictor.cls_score.in_features == 512
        assert all(p.requires_grad for p in _detector("c4", "c4_train_res5=true")[0].roi_heads.box_head.parameters())
    else:
        assert model.backbone.out_channels == 256 and all(p.requires_grad for p in model.backbone.fpn.parameters())

    images = [torch.rand(3, 64, 96), torch.rand(3, 64, 96)]
    boxes = torch.tensor([[8.0, 10.0, 40.0, 50.0], [50.0, 20.0, 90.0, 60.0]])
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}  # an image without boxes
    targets = [{"boxes": boxes, "labels": torch.tensor([3, 1])}, empty]
    probe = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        before = trunk(probe)
    trainable = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.SGD(trainable, lr=0.02, momentum=0.9)
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(p, s) for p, s in zip(trainable, start))  # the head learned
    with torch.no_grad():
        after = trunk(probe)
    for a, b in zip(before.values() if isinstance(before, dict) else [before],
                    after.values() if isinstance(after, dict) else [after]):  # fmt: skip
        assert torch.equal(a, b)  # the trunk did not move (weights and BN statistics)

    model.eval()
    model.roi_heads.score_thresh = 0.0  # an untrained classifier scores below the 0.05 default
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and out[0]["boxes"].shape[1] == 4 and len(out[0]["boxes"]) > 0
    assert out[0]["labels"].min() >= 1 and out[0]["labels"].max() <= 10 and out[0]["scores"].max() <= 1


# ------------------------------------------------------------------------------------------------- COCO AP


def _gt(boxes, crowd=()):
    """COCO ground truth: one 100x100 image (id 7), the given [x, y, w, h, category] boxes and crowd regions."""
    anns = [{"id": 0, "image_id": 7, "category_id": c, "bbox": [x, y, w, h], "iscrowd": 0} for x, y, w, h, c in boxes]
    anns += [{"id": 0, "image_id": 7, "category_id": c, "bbox": [x, y, w, h], "iscrowd": 1} for x, y, w, h, c in crowd]
    return {"images": [{"id": 7, "width": 100, "height": 100}], "annotations": anns,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]}  # fmt: skip


def _det(x, y, w, h, c, score):
    return {"image_id": 7, "category_id": c, "bbox": [x, y, w, h], "score": score}


A, B = (10, 10, 20, 20), (55, 55, 40, 40)  # two cars, small (400 px) and medium (1600 px) (category 3)


def test_coco_ap_known_answers():
    # Perfect detections: AP 1 at every IoU threshold; classes without ground truth are null, not 0.
    m = coco_evaluate(_gt([(*A, 3), (*B, 3)]), [_det(*A, 3, 0.9), _det(*B, 3, 0.8)], CLASSES)
    assert m["ap"] == pytest.approx(1.0) and m["ap50"] == pytest.approx(1.0) and m["ap75"] == pytest.approx(1.0)
    assert m["per_class_ap"][2] == pytest.approx(1.0) and m["per_class_ap"][0] is None
    assert m["num_gt"][2] == 2 and m["num_images"] == 1 and m["num_detections"] == 2
    assert m["ap_small"] == pytest.approx(1.0) and m["ap_medium"] == pytest.approx(1.0) and m["ap_large"] is None

    # One of two objects found: precision 1 up to recall 0.5, nothing after. 101-point interpolation: recall
    # points 0.00..0.50 (51 of them) have precision 1 -> AP = 51 / 101.
    m = coco_evaluate(_gt([(*A, 3), (*B, 3)]), [_det(*A, 3, 0.9)], CLASSES)
    assert m["ap"] == pytest.approx(51 / 101) and m["per_class_ap"][2] == pytest.approx(51 / 101)

    # Score order hit (0.9), false positive (0.8), hit (0.7): P/R = (1, .5), (.5, .5), (2/3, 1). Interpolated
    # precision is 1 for recall <= 0.5 (51 points) and 2/3 above (50 points).
    far = (40, 0, 10, 10)
    m = coco_evaluate(_gt([(*A, 3), (*B, 3)]), [_det(*A, 3, 0.9), _det(*far, 3, 0.8), _det(*B, 3, 0.7)], CLASSES)
    assert m["ap"] == pytest.approx((51 + 50 * 2 / 3) / 101)
    # The same false positive ranked last costs nothing.
    m = coco_evaluate(_gt([(*A, 3), (*B, 3)]), [_det(*A, 3, 0.9), _det(*far, 3, 0.1), _det(*B, 3, 0.7)], CLASSES)
    assert m["ap"] == pytest.approx(1.0)

    # A detection inside a crowd / ignored region is neither a hit nor a false positive.
    m = coco_evaluate(_gt([(*A, 3)], crowd=[(*B, 3)]), [_det(*B, 3, 0.95), _det(*A, 3, 0.9)], CLASSES)
    assert m["ap"] == pytest.approx(1.0) and m["num_gt"][2] == 1
    # ... whereas the same detection without the region is a false positive ranked first: recall 1 at precision 1/2.
    m = coco_evaluate(_gt([(*A, 3)]), [_det(*B, 3, 0.95), _det(*A, 3, 0.9)], CLASSES)
    assert m["ap"] == pytest.approx(0.5)

    # A wrong class is a miss for one class and a false positive for the other; nothing detected is AP 0.
    m = coco_evaluate(_gt([(*A, 3), (*B, 1)]), [_det(*A, 3, 0.9), _det(*B, 3, 0.8)], CLASSES)
    assert m["per_class_ap"][2] == pytest.approx(1.0) and m["per_class_ap"][0] == pytest.approx(0.0)
    assert m["ap"] == pytest.approx(0.5)
    m = coco_evaluate(_gt([(*A, 3)]), [], CLASSES)
    assert m["ap"] == pytest.approx(0.0) and m["num_detections"] == 0

    # IoU: a 20 px box shifted by 4 px has IoU 16*20 / (2*400 - 320) = 2/3 -> a hit at 0.50, 0.55, 0.60, 0.65 of the
    # ten thresholds 0.50:0.05:0.95, a miss above.
    m = coco_evaluate(_gt([(*A, 3)]), [_det(14, 10, 20, 20, 3, 0.9)], CLASSES)
    assert m["ap50"] == pytest.approx(1.0) and m["ap75"] == pytest.approx(0.0) and m["ap"] == pytest.approx(0.4)


# ------------------------------------------------------------------------------------------------- schedule


def test_schedule_targets_and_batches():
    cfg = load_detection_config("detection_bdd100k")
    # BDD100K: 70,000 train images / 16 = 4375 steps per epoch; x0.1 after epoch 8, x0.01 after epoch 11.
    assert milestone_steps(12 * 4375, cfg) == [8 * 4375, 11 * 4375]
    assert lr_factor(0, 52500, cfg) == pytest.approx(0.001)
    assert lr_factor(250, 52500, cfg) == pytest.approx(0.001 + 0.999 * 0.5)
    assert lr_factor(500, 52500, cfg) == 1.0 and lr_factor(34999, 52500, cfg) == 1.0
    assert lr_factor(35000, 52500, cfg) == pytest.approx(0.1) and lr_factor(48125, 52500, cfg) == pytest.approx(0.01)

    item = {"image": torch.zeros(3, 4, 10, dtype=torch.uint8), "boxes": torch.tensor([[1.0, 0, 3, 2], [0, 0, 5, 4],
            [2, 1, 2, 3]]), "labels": torch.tensor([3, 1, 2]), "iscrowd": torch.tensor([False, True, False]),
            "ignore": torch.tensor([False, True, False])}  # fmt: skip
    image, target = training_target(item, flip=True)
    assert image.dtype == torch.float32 and target["labels"].tolist() == [3]  # crowd and zero-width boxes dropped
    assert target["boxes"].tolist() == [[7.0, 0.0, 9.0, 2.0]]  # x1' = W - x2, x2' = W - x1 (x2 exclusive)

    # One global batch is the same images on one rank or split over two; a step always gets the same batch.
    one = StepBatches(range(10), 4, DistInfo(), seed=3, start=0, stop=5)
    two = [StepBatches(range(10), 2, DistInfo(rank=r, world_size=2), seed=3, start=0, stop=5) for r in (0, 1)]
    assert one.steps_per_epoch == 2
    for step in range(5):
        assert sorted(one.batch(step)) == sorted(two[0].batch(step) + two[1].batch(step))
    assert list(StepBatches(range(10), 4, DistInfo(), seed=3, start=3, stop=5)) == [one.batch(3), one.batch(4)]


# ------------------------------------------------------------------------------------------------- end to end


def _write_det_dataset(root, n_train=6, n_val=3, size=(64, 96)):
    """A BDD100K det_20 folder by hand: grey-noise frames with bright 'cars' (and a darker 'pedestrian'), one train
    frame without labels, a crowd box and an ignored category ('other vehicle')."""
    rng = np.random.default_rng(0)
    h, w = size
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / "100k" / split).mkdir(parents=True)
        frames = []
        for i in range(n):
            image = rng.integers(60, 100, (h, w, 3), dtype=np.uint8)
            labels = []
            if not (split == "train" and i == 1):
                x, y = int(rng.integers(2, w - 40)), int(rng.integers(2, h - 30))
                image[y : y + 24, x : x + 36] = (230, 40, 40)
                labels.append({"id": "1", "category": "car", "attributes": {"occluded": False, "truncated": False},
                               "box2d": {"x1": x, "y1": y, "x2": x + 35, "y2": y + 23}})  # fmt: skip
                px = (x + 45) % (w - 12)
                image[4:30, px : px + 10] = (30, 30, 200)
                labels.append({"id": "2", "category": "person", "box2d": {"x1": px, "y1": 4, "x2": px + 9, "y2": 29}})
            if i == 2:
                labels.append({"id": "3", "category": "other vehicle", "box2d": {"x1": 0, "y1": 40, "x2": 9, "y2": 55}})
                labels.append({"id": "4", "category": "car", "attributes": {"crowd": True},
                               "box2d": {"x1": w - 20, "y1": h - 20, "x2": w - 1, "y2": h - 1}})  # fmt: skip
            name = f"{split}{i:03d}.jpg"
            Image.fromarray(image).save(root / "images" / "100k" / split / name, quality=95)
            frames.append({"name": name, "attributes": {"weather": "clear"}, "labels": labels})
        (root / "labels" / "det_20").mkdir(parents=True, exist_ok=True)
        (root / "labels" / "det_20" / f"det_{split}.json").write_text(json.dumps(frames))
    return root


def _cli(argv):
    from poodle.cli import detect

    parser = argparse.ArgumentParser()
    detect.add_arguments(parser)
    return detect.run(parser.parse_intermixed_args(argv))


@pytest.mark.slow
def test_end_to_end_results_figure_and_exact_resume(tmp_path, capsys, monkeypatch):
    data = _write_det_dataset(tmp_path / "det")
    over = [*TINY, "batch_size=2", "log_every=1", "figures=2", "figure_score=0.0", "filter_empty_gt=false"]
    straight = tmp_path / "straight"
    assert _cli(["--head", "fpn", "--dataset", "synthdrive", "--data", str(data), "--weights", "random", "--arch",
                 "resnet18", "--out", str(straight), "--steps", "2", "--no-progress", "--name", "Scratch",
                 *over]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert (
        "| Method | Arch | Pretrained on | SynthDrive Faster R-CNN FPN mAP | SynthDrive Faster R-CNN FPN AP50 |"
        in printed
    )
    assert "| Scratch | R18 | - | " in printed and "| AP | AP50 | AP75 | APs |" in printed

    results = json.loads((straight / "results.json").read_text())
    assert results["task"] == "detection" and results["head"] == "fpn" and results["readout"] == "faster_rcnn_fpn"
    assert results["classes"] == CLASSES and results["steps"] == 2 and results["split"] == "val"
    m = results["metrics"]
    assert set(m) >= {"ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "per_class_ap", "num_gt"}
    assert 0.0 <= m["ap"] <= 1.0 and m["num_images"] == 3 and m["num_gt"][2] == 3 and m["num_gt"][0] == 3
    assert results["data_check"]["train"]["crowd_boxes"] == 1 and results["data_check"]["train"]["ignored_boxes"] == 1
    assert results["method"]["name"] == "Scratch" and results["timings"]["train_seconds"] >= 0
    assert "Det FPN mAP" in (straight / "table.md").read_text()
    figure = Image.open(straight / "figures" / "detections.png")
    assert figure.width > 2 * 96 and figure.height > 2 * 64

    # Stop after 1 step, resume to 2: the same weights as 2 straight steps (data order, flips, RPN/RoI sampling).
    resumed = tmp_path / "resumed"
    cfg = load_detection_config("detection_synthdrive_cpu", ["head=fpn", *over])
    part = run_detection("random", "synthdrive", data, cfg, resumed, steps=2, arch="resnet18", progress=False,
                         stop_at=1)  # fmt: skip
    assert part["step"] == 1 and not (resumed / "results.json").exists()
    assert torch.load(resumed / "last.pt", weights_only=True)["step"] == 1
    again = run_detection("random", "synthdrive", data, cfg, resumed, steps=2, arch="resnet18", progress=False)
    assert again["timings"]["resumed_from_step"] == 1
    a = torch.load(straight / "last.pt", weights_only=True)
    b = torch.load(resumed / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 2
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert again["metrics"]["ap"] == pytest.approx(results["metrics"]["ap"], abs=1e-9)
    assert again["train_loss"] == results["train_loss"]

    # A resume with another recipe is refused, naming the difference.
    with pytest.raises(DetectionError, match=r"lr: run has 0.005, now 0.01"):
        run_detection("random", "synthdrive", data, load_detection_config("detection_synthdrive_cpu",
                      ["head=fpn", *over, "lr=0.01"]), resumed, steps=2, arch="resnet18", progress=False)  # fmt: skip

    # SIGTERM (preemption) during step 2 of 3: that step is finished and saved, the run returns, a rerun resumes.
    import poodle.evaluation.detection as D

    real_lr_factor = D.lr_factor

    def sigterm_at_step_1(step, total, recipe):
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_lr_factor(step, total, recipe)

    monkeypatch.setattr(D, "lr_factor", sigterm_at_step_1)
    stopped = run_detection("random", "synthdrive", data, cfg, tmp_path / "sig", steps=3, arch="resnet18",
                            progress=False)  # fmt: skip
    assert stopped["interrupted"] == signal.SIGTERM and stopped["step"] == 2
    assert torch.load(tmp_path / "sig" / "last.pt", weights_only=True)["step"] == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is not left behind
    monkeypatch.setattr(D, "lr_factor", real_lr_factor)
    finished = run_detection("random", "synthdrive", data, cfg, tmp_path / "sig", steps=3, arch="resnet18",
                             progress=False)  # fmt: skip
    assert finished["timings"]["resumed_from_step"] == 2 and "ap" in finished["metrics"]

    # A non-finite loss stops with a clear error (an infinite lr breaks the weights at step 1).
    broken = load_detection_config("detection_synthdrive_cpu", ["head=fpn", *over, "figures=0"])
    broken.lr = float("inf")
    with pytest.raises(DetectionError, match="non-finite loss at step 2"):
        run_detection("random", "synthdrive", data, broken, tmp_path / "nan", steps=3, arch="resnet18", progress=False)


def test_broken_labels_stop_before_training(tmp_path):
    data = _write_det_dataset(tmp_path / "det", n_train=2, n_val=1)
    frames = json.loads((data / "labels" / "det_20" / "det_val.json").read_text())
    frames[0]["labels"][0]["box2d"]["x2"] = -5.0
    (data / "labels" / "det_20" / "det_val.json").write_text(json.dumps(frames))
    with pytest.raises(UserError, match="det_val.json: frame 0.*x2 < x1"):
        _cli(["--head", "c4", "--dataset", "bdd100k", "--data", str(data), "--weights", "random", "--arch", "resnet18",
              "--out", str(tmp_path / "out"), *TINY])  # fmt: skip
    assert not (tmp_path / "out" / "last.pt").exists()


def _ddp_worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})  # fmt: skip
    import poodle.evaluation.detection as detection

    torch.set_num_threads(1)
    models, build = [], detection.build_detector
    detection.build_detector = lambda *a, **k: models.append(build(*a, **k)) or models[-1]  # this rank's model
    cfg = load_detection_config("detection_synthdrive_cpu", ["head=fpn", *TINY, "batch_size=2", "figures=0"])
    results = run_detection("random", "synthdrive", data, cfg, out, steps=2, arch="resnet18", progress=False)
    torch.save(
        {"num_images": results["metrics"]["num_images"], "state": models[0].state_dict()}, f"{out}/rank{rank}.pt"
    )
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_gloo(tmp_path):
    import socket

    import torch.multiprocessing as mp

    data = _write_det_dataset(tmp_path / "det")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    mp.spawn(_ddp_worker, args=(2, port, str(data), str(out)), nprocs=2, join=True)
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["num_images"] == r1["num_images"] == 3  # every val image scored once over the two shards
    for k, v in r0["state"].items():  # DDP averaged the gradients: both ranks hold the same detector
        assert torch.equal(v, r1["state"][k]), k
    results = json.loads((out / "results.json").read_text())
    assert results["timings"]["world_size"] == 2 and results["metrics"]["num_images"] == 3
