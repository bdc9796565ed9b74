"""The detection readout: Faster R-CNN (C4 or FPN) on a frozen backbone, COCO-style mAP on the val split.

    results = run_detection("runs/sd", "synthdrive", "demo_out/synthdrive",
                            load_detection_config("detection_synthdrive_cpu", ["head=fpn"]), "runs/sd/det_fpn")

PooDLe reads its backbones out with "Faster R-CNN with ResNet-C4" and "Faster R-CNN with FPN", both on a frozen
backbone (PooDLe paper, Sec. 6.1). The models are torchvision's `FasterRCNN`:

- **C4** (detectron2's R50-C4 assembly): conv1..layer3 of the backbone (stride 16) feed one RPN over 15 anchors
  per position (sizes 32-512 x ratios 0.5/1/2) and a 14x14 RoIAlign; the box head is res5 (a copy of the pretrained
  layer4, first block stride 2 -> 7x7) + global average pooling, then `FastRCNNPredictor`. `c4_train_res5` says
  whether that res5 copy learns; its BatchNorm is frozen either way.
- **FPN** (torchvision's `fasterrcnn_resnet50_fpn`): layer1-4 into a feature pyramid (256 channels,
  LastLevelMaxPool), as torchvision's `_resnet_fpn_extractor(trainable_layers=0)`: the trunk is frozen, the FPN, RPN
  and the 2-fc box head learn.

The trunk's BatchNorm layers become `torchvision.ops.FrozenBatchNorm2d` with the same statistics and eps, and none
of its parameters requires grad, so training changes nothing in it. Training: SGD, linear warm-up, lr x gamma at the
milestones; crowd and ignored boxes are removed from the targets; images without boxes are allowed. Evaluation:
pycocotools' COCOeval (bbox) on the val split, crowd and ignored boxes as iscrowd regions. Single process, or DDP
under `torchrun` (each rank takes `batch_size / world_size` images of the same global batch; the val split is
sharded by index and the detections gathered on rank 0). OUT/last.pt is written every `checkpoint_every` steps and
resumed exactly (model, optimiser, step, RNG); a resume with another recipe is refused.

Outputs in `out_dir`: `results.json` (`"task": "detection"`), `table.md` (a Table 1-style Det C4 / Det FPN mAP row,
the 12 COCO numbers, per-class AP), `coco_eval.txt` (pycocotools' summary), `detector.pt` (the trained parts) and
`figures/detections.png`.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from poodle.engine.checkpoint import atomic_save, load_checkpoint, rng_state, set_rng_state
from poodle.engine.distributed import DistInfo, all_reduce_mean, barrier, gather_objects, init_distributed
from poodle.engine.run_control import StopRequest, ignore_stop_signals_in_worker
from poodle.evaluation.backbones import FeatureBackbone, load_backbone
from poodle.evaluation.detection_config import RESUMABLE_KEYS, DetectionConfig
from poodle.evaluation.readout import resolve_device
from poodle.evaluation.tables import COCO_COLUMNS, detection_tables, write_results
from poodle.progress import progress_bar

DATASETS = ("bdd100k", "synthdrive")
CHECKPOINT_KIND = "poodle.detection/1"
# pycocotools' 12 summary numbers, in `COCOeval.stats` order, and the names results.json stores them under.
COCO_STATS = tuple(key for key, _ in COCO_COLUMNS)
READOUT_NAMES = {"c4": "faster_rcnn_c4", "fpn": "faster_rcnn_fpn"}


class DetectionError(RuntimeError):
    """The detection readout cannot go on; the message says why and what to do."""


# ---------------------------------------------------------------------------------------------------------------
# model


def freeze_batchnorm(module: nn.Module) -> int:
    """Replace every `BatchNorm2d` under `module` (in place) by a `FrozenBatchNorm2d` with the same affine weights,
    running statistics and eps; returns how many were replaced. A BN layer without running statistics is refused."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            if child.running_mean is None or child.running_var is None:
                raise DetectionError(f"BatchNorm layer {name!r} has no running statistics to freeze")
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            with torch.no_grad():
                if child.affine:
                    frozen.weight.copy_(child.weight)
                    frozen.bias.copy_(child.bias)
                frozen.running_mean.copy_(child.running_mean)
                frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen.to(child.running_mean.device))
            count += 1
        else:
            count += freeze_batchnorm(child)
    return count


def _frozen(module: nn.Module) -> nn.Module:
    freeze_batchnorm(module)
    module.requires_grad_(False)
    return module.eval()


class C4Trunk(nn.Module):
    """conv1 .. layer3 of a ResNet (stride 16): the C4 detector's backbone; returns one feature map (name '0')."""

    def __init__(self, encoder: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = encoder.conv1, encoder.bn1, encoder.relu, encoder.maxpool
        self.layer1, self.layer2, self.layer3 = encoder.layer1, encoder.layer2, encoder.layer3
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))


class Res5Head(nn.Module):
    """res5 (layer4, first block stride 2) + global average pooling: 14x14 RoI features -> (N, C)."""

    def __init__(self, layer4: nn.Module) -> None:
        super().__init__()
        self.res5 = layer4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res5(x).mean(dim=(2, 3))


def build_detector(backbone: FeatureBackbone, cfg: DetectionConfig, num_classes: int) -> FasterRCNN:
    """Faster R-CNN of `cfg.head` on `backbone` (not dilated, stride 32 at layer4), whose encoder it takes over:
    its BatchNorm becomes FrozenBatchNorm2d and its parameters stop requiring grad. `num_classes` counts the
    background (11 for the 10 BDD100K detection classes)."""
    if backbone.dilated:
        raise DetectionError("the detection readout needs the backbone at its standard strides: load it with "
                             "dilated=False")  # fmt: skip
    encoder = _frozen(backbone.encoder)
    rpn = cfg.rpn_settings()
    common = {
        "min_size": cfg.min_size,
        "max_size": cfg.max_size,
        "box_batch_size_per_image": cfg.box_batch_size_per_image,
        **{f"rpn_{k}": v for k, v in rpn.items()},
    }
    if cfg.head == "c4":
        res5 = copy.deepcopy(encoder.layer4)  # FrozenBatchNorm2d already; convs trainable only if asked
        res5.requires_grad_(cfg.c4_train_res5)
        trunk = C4Trunk(encoder, backbone.channels["layer3"])
        anchors = AnchorGenerator(sizes=((32, 64, 128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),))
        pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=14, sampling_ratio=0)
        predictor = FastRCNNPredictor(backbone.channels["layer4"], num_classes)
        return FasterRCNN(trunk, None, rpn_anchor_generator=anchors, box_roi_pool=pool, box_head=Res5Head(res5),
                          box_predictor=predictor, **common)  # fmt: skip
    # FPN: torchvision's _resnet_fpn_extractor(trainable_layers=0), on layer1..4 of our encoder.
    layers = ("layer1", "layer2", "layer3", "layer4")
    return_layers = {name: str(i) for i, name in enumerate(layers)}
    in_channels = [backbone.channels[name] for name in layers]
    fpn = BackboneWithFPN(encoder, return_layers, in_channels, 256, extra_blocks=LastLevelMaxPool())
    return FasterRCNN(fpn, num_classes, **common)


def frozen_trunk(model: nn.Module) -> nn.Module:
    """The frozen part of a detector from `build_detector`: the ResNet stages it reads features from."""
    model = model.module if isinstance(model, DistributedDataParallel) else model
    return model.backbone.body if isinstance(model.backbone, BackboneWithFPN) else model.backbone


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state of everything but the frozen trunk (what `detector.pt` stores)."""
    trunk_ids = {id(t) for t in frozen_trunk(model).state_dict(keep_vars=True).values()}
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items() if id(v) not in trunk_ids}


# ---------------------------------------------------------------------------------------------------------------
# schedule and data


def lr_factor(step: int, total_steps: int, cfg: DetectionConfig) -> float:
    """lr multiplier at 0-based `step`: linear warm-up (MMDetection's LinearLR by iteration: `warmup_factor` at step
    0, 1 at `warmup_steps`) times gamma per milestone passed. Milestones are epochs, placed at
    round(total_steps x milestone / epochs), which is milestone x steps-per-epoch when steps = 0."""
    factor = 1.0
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        factor = cfg.warmup_factor + (1.0 - cfg.warmup_factor) * step / cfg.warmup_steps
    for m in milestone_steps(total_steps, cfg):
        if step >= m:
            factor *= cfg.gamma
    return factor


def milestone_steps(total_steps: int, cfg: DetectionConfig) -> list[int]:
    return [round(total_steps * m / cfg.epochs) for m in cfg.milestones]


def training_target(item: dict[str, Any], flip: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(image in [0, 1], target) for torchvision: crowd and ignored boxes removed, degenerate boxes dropped, an
    optional horizontal flip (xyxy with exclusive x2: x1' = W - x2, x2' = W - x1)."""
    image = item["image"].float().div(255.0)
    boxes = torch.as_tensor(item["boxes"], dtype=torch.float32).reshape(-1, 4)
    labels = torch.as_tensor(item["labels"], dtype=torch.int64).reshape(-1)
    drop = torch.as_tensor(item["iscrowd"], dtype=torch.bool).reshape(-1) | \
        torch.as_tensor(item["ignore"], dtype=torch.bool).reshape(-1)  # fmt: skip
    keep = ~drop & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, labels = boxes[keep], labels[keep]
    if flip:
        image = image.flip(-1)
        width = image.shape[-1]
        boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
    return image, {"boxes": boxes, "labels": labels}


def _flip(seed: int, epoch: int, index: int, p: float) -> bool:
    # A draw of its own per (seed, epoch, image): the same on every rank, in every worker and after a resume.
    return p > 0 and random.Random(f"{seed}:{epoch}:{index}").random() < p


class _TrainView(Dataset):
    """Train items addressed by (epoch, index): image + target, flipped by a seeded per-image draw."""

    def __init__(self, dataset, cfg: DetectionConfig) -> None:
        self.dataset, self.hflip, self.seed = dataset, cfg.hflip, cfg.seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        epoch, index = key
        return training_target(self.dataset[index], _flip(self.seed, epoch, index, self.hflip))


class StepBatches:
    """Per-rank batches of (epoch, index) keys for steps [start, stop), DistributedSampler-style: each epoch is a
    permutation of `indices` drawn with seed + epoch, cut to whole global batches (drop_last), and rank r takes every
    world_size-th image from r. The images of a global batch are the same whatever the number of ranks, and step s
    always gets the same batch, so a resumed run sees what an uninterrupted one would have."""

    def __init__(self, indices: Sequence[int], per_rank: int, info: DistInfo, seed: int, start: int, stop: int) -> None:
        self.indices = list(indices)
        self.per_rank, self.info, self.seed, self.start, self.stop = per_rank, info, seed, start, stop
        self.steps_per_epoch = len(self.indices) // (per_rank * info.world_size)
        self._share: tuple[int, list[int]] | None = None  # (epoch, this rank's images of it)
        if self.steps_per_epoch < 1:
            raise DetectionError(f"{len(self.indices)} training images are fewer than one batch of "
                                 f"{per_rank * info.world_size}")  # fmt: skip

    def batch(self, step: int) -> list[tuple[int, int]]:
        epoch, b = divmod(step, self.steps_per_epoch)
        if self._share is None or self._share[0] != epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(len(self.indices), generator=g).tolist()
            order = order[: self.steps_per_epoch * self.per_rank * self.info.world_size]
            self._share = (epoch, order[self.info.rank :: self.info.world_size])
        share = self._share[1]
        return [(epoch, self.indices[i]) for i in share[b * self.per_rank : (b + 1) * self.per_rank]]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.stop):
            yield self.batch(step)

    def __len__(self) -> int:
        return self.stop - self.start


def _collate(items: list) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    return [im for im, _ in items], [t for _, t in items]


def _trainable_images(dataset, filter_empty: bool) -> list[int]:
    """Indices of the train images: all, or with `filter_empty` those with at least one box that is neither crowd
    nor ignored."""
    if not filter_empty:
        return list(range(len(dataset)))
    keep = dataset.learnable_images()
    if not keep:
        raise DetectionError("no train image has a box to learn from (all are empty, crowd or ignored); check the "
                             "labels, or set filter_empty_gt=false")  # fmt: skip
    return keep


# ---------------------------------------------------------------------------------------------------------------
# evaluation


def to_coco_detections(image_id: int, output: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """One image's torchvision output (xyxy, x2 exclusive) as COCO results: bbox [x, y, w, h] with w = x2 - x1."""
    boxes = output["boxes"].detach().float().cpu()
    scores = output["scores"].detach().float().cpu().tolist()
    labels = output["labels"].detach().cpu().tolist()
    out = []
    for (x1, y1, x2, y2), s, c in zip(boxes.tolist(), scores, labels):
        out.append({"image_id": int(image_id), "category_id": int(c), "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(s)})  # fmt: skip
    return out


def coco_evaluate(ground_truth: dict[str, Any], detections: Sequence[dict[str, Any]], classes: Sequence[str],
                  image_ids: Sequence[int] | None = None) -> dict[str, Any]:  # fmt: skip
    """COCO bbox AP of `detections` against `ground_truth` (a COCO dict; iscrowd=1 annotations are regions whose
    detections are neither true nor false positives) with pycocotools' COCOeval: IoU 0.50:0.05:0.95, 101 recall
    points, maxDets 1/10/100, areas small < 32^2 <= medium < 96^2 <= large.

    `image_ids` restricts the evaluation to those images (default: every image of the ground truth). Category ids
    are 1..len(classes) in `classes` order. Returns fractions: `ap`, `ap50`, ... (`COCO_STATS`; null where COCOeval
    gives -1, e.g. APl with no large object), `per_class_ap` and `per_class_ap50` (null for a class without ground
    truth), `num_gt` (non-crowd boxes per class), `num_images`, `num_detections` and `summary` (COCOeval's text)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ids = [im["id"] for im in ground_truth["images"]] if image_ids is None else [int(i) for i in image_ids]
    wanted = set(ids)
    images = [im for im in ground_truth["images"] if im["id"] in wanted]
    if len(images) != len(wanted):
        raise DetectionError(f"{len(wanted) - len(images)} evaluated image ids are not in the ground truth")
    categories = [{"id": i + 1, "name": str(n)} for i, n in enumerate(classes)]
    annotations = []
    for a in ground_truth["annotations"]:
        if a["image_id"] not in wanted:
            continue
        x, y, w, h = (float(v) for v in a["bbox"])
        # Ids from 1: COCOeval marks an unmatched detection with gt id 0, so a gt with id 0 would never count.
        annotations.append({"id": len(annotations) + 1, "image_id": a["image_id"], "category_id": int(a["category_id"]),
                            "bbox": [x, y, w, h], "area": float(a.get("area", w * h)),
                            "iscrowd": int(bool(a.get("iscrowd", 0)))})  # fmt: skip
    dets = []
    for d in detections:
        if d["image_id"] not in wanted:
            raise DetectionError(f"a detection on image {d['image_id']}, which is not evaluated")
        x, y, w, h = (float(v) for v in d["bbox"])
        # The fields COCO.loadRes would add, built here so that an empty list works too (loadRes fails on it).
        dets.append({"id": len(dets) + 1, "image_id": d["image_id"], "category_id": int(d["category_id"]),
                     "bbox": [x, y, w, h], "area": w * h, "score": float(d["score"]), "iscrowd": 0})  # fmt: skip

    def coco(anns: list[dict[str, Any]]) -> COCO:
        c = COCO()
        c.dataset = {"images": images, "categories": categories, "annotations": anns}
        with contextlib.redirect_stdout(io.StringIO()):
            c.createIndex()
        return c

    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        ev = COCOeval(coco(annotations), coco(dets), iouType="bbox")
        ev.params.imgIds = sorted(wanted)
        ev.params.catIds = [c["id"] for c in categories]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {k: (float(v) if v > -1 else None) for k, v in zip(COCO_STATS, ev.stats.tolist())}
    precision = ev.eval["precision"]  # [T iou, R recall, K class, A area, M maxDets]; -1 = no gt
    per_class, per_class50 = [], []
    for k in range(len(classes)):
        p = precision[:, :, k, 0, -1]
        per_class.append(float(p[p > -1].mean()) if (p > -1).any() else None)
        p50 = precision[0, :, k, 0, -1]
        per_class50.append(float(p50[p50 > -1].mean()) if (p50 > -1).any() else None)
    counted = [a["category_id"] for a in annotations if not a["iscrowd"]]
    num_gt = [counted.count(k + 1) for k in range(len(classes))]
    return {**stats, "per_class_ap": per_class, "per_class_ap50": per_class50, "num_gt": num_gt,
            "num_images": len(images), "num_detections": len(dets), "summary": text.getvalue()}  # fmt: skip


@torch.no_grad()
def predict(model: nn.Module, dataset, indices: Sequence[int], device: torch.device, batch_size: int = 1,
            workers: int = 0, autocast: bool = False, progress: bool = False,
            ) -> tuple[list[dict[str, Any]], list[int]]:  # fmt: skip
    """COCO-format detections of `model` (eval mode) on `dataset[indices]`, and the image ids it saw."""
    model.eval()
    loader = DataLoader(torch.utils.data.Subset(dataset, list(indices)), batch_size=batch_size,
                        num_workers=workers, collate_fn=list)  # fmt: skip
    out: list[dict[str, Any]] = []
    ids: list[int] = []
    bar = progress_bar(len(indices), "eval", "img", enabled=progress, leave=False)
    for items in loader:
        images = [it["image"].to(device, non_blocking=True).float().div_(255.0) for it in items]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            outputs = model(images)
        for it, o in zip(items, outputs):
            out.extend(to_coco_detections(it["image_id"], o))
            ids.append(int(it["image_id"]))
        bar.update(len(items))
    bar.close()
    return out, ids


# ---------------------------------------------------------------------------------------------------------------
# the readout


def _check_data(data_root, info: DistInfo) -> dict[str, Any]:
    """`check_detection_data` on train and val, on rank 0, before anything is built; the verdict is broadcast, so
    every rank stops with the same line or none does."""
    import torch.distributed as dist

    from poodle.data.detection import DetectionDataError, check_detection_data

    payload: dict[str, Any] = {}
    if info.is_main:
        try:
            payload = {"check": {split: check_detection_data(data_root, split) for split in ("train", "val")}}
        except DetectionDataError as e:
            payload = {"error": str(e)}
    if info.enabled:
        box = [payload]
        dist.broadcast_object_list(box, src=0)
        payload = box[0]
    if "error" in payload:
        raise DetectionDataError(payload["error"])
    return payload["check"]


def _check_resumable(ckpt: dict[str, Any], expected: dict[str, Any], path: Path) -> None:
    diffs = []
    saved_cfg, now_cfg = ckpt.get("config", {}), expected["config"]
    for key in sorted(set(saved_cfg) | set(now_cfg)):
        if key not in RESUMABLE_KEYS and saved_cfg.get(key) != now_cfg.get(key):
            diffs.append(f"{key}: run has {saved_cfg.get(key)!r}, now {now_cfg.get(key)!r}")
    for key in ("backbone", "dataset", "total_steps", "num_train_images"):
        if ckpt.get(key) != expected[key]:
            diffs.append(f"{key}: run has {ckpt.get(key)!r}, now {expected[key]!r}")
    if ckpt.get("kind") != CHECKPOINT_KIND:
        diffs.insert(0, f"kind: {ckpt.get('kind')!r} is not a detection readout checkpoint")
    if diffs:
        raise DetectionError(f"{path} holds a detection readout with another recipe:\n  " + "\n  ".join(diffs)
                             + "\nUse another --out folder, pass --no-resume to start over, or rerun with the run's "
                             "recipe.")  # fmt: skip


def run_detection(
    backbone_spec: str | Path,
    dataset_name: str,
    data_root: str | Path,
    cfg: DetectionConfig,
    out_dir: str | Path,
    steps: int | None = None,
    arch: str | None = None,
    method: dict[str, Any] | None = None,
    progress: bool = True,
    resume: bool = True,
    stop_at: int | None = None,
) -> dict[str, Any]:
    """Train a Faster R-CNN readout of `cfg.head` on the frozen backbone and evaluate it on the val split; returns
    the results dict (also written to out_dir/results.json by rank 0).

    `steps` overrides the recipe's total steps (the milestones keep their share of it). `stop_at` ends training
    after that step with OUT/last.pt written and no evaluation (returns {"step": ...}); a later call resumes."""
    t_start = time.perf_counter()
    if dataset_name not in DATASETS:
        raise DetectionError(f"unknown detection dataset {dataset_name!r}; choose one of: {', '.join(DATASETS)}")
    out_dir = Path(out_dir)
    info = init_distributed("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
                            else "cpu")  # fmt: skip
    device = resolve_device(cfg.device, info)
    if cfg.batch_size % info.world_size:
        raise DetectionError(f"batch_size {cfg.batch_size} is not divisible by the {info.world_size} processes")
    per_rank = cfg.batch_size // info.world_size
    say = print if info.is_main else (lambda *a, **k: None)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)

    # ---- data: labels checked before anything is built
    from poodle.data.detection import DET_CLASSES, DetectionDataset

    data_check = _check_data(data_root, info)
    train_ds = DetectionDataset(data_root, "train", max_images=cfg.max_train_images or None)
    val_ds = DetectionDataset(data_root, "val", max_images=cfg.max_val_images or None)
    classes = list(DET_CLASSES)
    train_indices = _trainable_images(train_ds, cfg.filter_empty_gt)
    spe = len(train_indices) // cfg.batch_size
    if spe < 1:
        raise DetectionError(f"{len(train_indices)} usable train images are fewer than one batch of {cfg.batch_size}")
    total_steps = int(steps if steps is not None else (cfg.steps or cfg.epochs * spe))
    if total_steps < 1:
        raise DetectionError(f"steps must be >= 1, got {total_steps}")

    # ---- model: the random ("Scratch") trunk and the new layers are seeded
    torch.manual_seed(cfg.seed)
    backbone = load_backbone(str(backbone_spec), arch=arch, dilated=False, keep_decoder=False)
    bb_desc = {"arch": backbone.arch, "source": backbone.source}
    model = build_detector(backbone, cfg, len(classes) + 1).to(device)
    del backbone
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    torch.manual_seed(cfg.seed * 1009 + 1 + info.rank)  # RPN / RoI sampling stream of this rank

    # ---- resume
    last = out_dir / "last.pt"
    expected = {"config": cfg.to_dict(), "backbone": str(backbone_spec), "dataset": dataset_name,
                "total_steps": total_steps, "num_train_images": len(train_indices)}  # fmt: skip
    start_step = 0
    logged: dict[str, Any] = {"train_loss": math.nan, "train_loss_parts": {}}  # the last logged loss (kept in last.pt)
    if resume and last.exists():
        ckpt = load_checkpoint(last, map_location=device)
        _check_resumable(ckpt, expected, last)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("rng"):
            set_rng_state(ckpt["rng"][min(info.rank, len(ckpt["rng"]) - 1)])
        start_step = int(ckpt["step"])
        logged.update({k: ckpt[k] for k in logged if k in ckpt})
        say(f"resuming {last} from step {start_step}", flush=True)
    barrier(info)  # every rank has read last.pt before rank 0 may overwrite it

    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                  broadcast_buffers=False) if info.enabled else model  # fmt: skip
    autocast = cfg.amp and device.type == "cuda"
    n_trained = sum(p.numel() for p in params)
    res5 = ", res5 trained" if cfg.head == "c4" and cfg.c4_train_res5 else ""
    say(f"detection readout: Faster R-CNN {cfg.head.upper()} on frozen {bb_desc['arch']} [{bb_desc['source']}] "
        f"({n_trained / 1e6:.2f} M trained parameters{res5})"
        f" | {dataset_name}: {len(train_indices)} train / {len(val_ds)} val images, {len(classes)} classes | "
        f"{total_steps} steps x batch {cfg.batch_size} ({total_steps / spe:.2f} epochs) on {device} "
        f"x{info.world_size}", flush=True)  # fmt: skip

    saved = {"step": start_step if start_step > 0 else None}  # what last.pt holds

    def save(step: int) -> None:
        states = gather_objects(rng_state(), info)
        if info.is_main:
            atomic_save({"kind": CHECKPOINT_KIND, "step": step, "model": model.state_dict(),
                         "optimizer": optimizer.state_dict(), "rng": states, "world_size": info.world_size,
                         **logged, **expected}, last)  # fmt: skip
        saved["step"] = step
        barrier(info)

    # ---- train
    stop = total_steps if stop_at is None else min(int(stop_at), total_steps)
    t_train = time.perf_counter()
    if start_step < stop:
        sampler = StepBatches(train_indices, per_rank, info, cfg.seed, start_step, stop)
        loader = DataLoader(_TrainView(train_ds, cfg), batch_sampler=sampler, num_workers=cfg.workers,
                            collate_fn=_collate, pin_memory=device.type == "cuda",
                            worker_init_fn=ignore_stop_signals_in_worker,
                            generator=torch.Generator().manual_seed(cfg.seed))  # fmt: skip
        # (its own generator: creating the iterator draws no number from the global RNG, which resumes exactly)
        ddp.train()
        bar = progress_bar(stop - start_step, f"{cfg.head} detection readout", "step",
                           enabled=progress and info.is_main)  # fmt: skip
        window: list[float] = []
        signals = StopRequest(announce=info.is_main)  # SIGTERM / Ctrl-C: save this step, then exit
        signals.install()
        interrupted = None
        try:
            for step, (images, targets) in zip(range(start_step, stop), loader):
                for g in optimizer.param_groups:
                    g["lr"] = cfg.lr * lr_factor(step, total_steps, cfg)
                images = [im.to(device, non_blocking=True) for im in images]
                targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    losses = ddp(images, targets)
                loss = sum(v.float() for v in losses.values())
                # Checked on every rank every step, before the update: a non-finite loss never reaches the weights or
                # last.pt, and all ranks stop together (one rank alone would leave the others in the all-reduce). The
                # same transfer carries a stop request, so every rank saves the same step.
                flags = torch.tensor([0.0 if torch.isfinite(loss.detach()) else 1.0, float(signals.signal is not None)],
                                     device=device)  # fmt: skip
                if info.enabled:
                    torch.distributed.all_reduce(flags)
                bad, stopping = flags.tolist()
                if bad > 0:
                    parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
                    kept = f"; {last} holds step {saved['step']}" if saved["step"] is not None else ""
                    raise DetectionError(f"non-finite loss at step {step + 1} ({parts}); lower lr (now {cfg.lr}) or "
                                         f"raise warmup_steps (now {cfg.warmup_steps}){kept}")  # fmt: skip
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                window.append(float(loss.detach()))
                done = step + 1
                bar.update(1)
                if done % cfg.log_every == 0 or done == stop:
                    last_loss = float(all_reduce_mean(torch.tensor(sum(window) / len(window), dtype=torch.float64,
                                                                   device=device), info))  # fmt: skip
                    logged.update(
                        train_loss=last_loss, train_loss_parts={k: float(v.detach()) for k, v in losses.items()}
                    )
                    lr_now = optimizer.param_groups[0]["lr"]
                    bar.set_postfix(loss=f"{last_loss:.3f}", lr=f"{lr_now:.2e}")
                    if not progress and info.is_main:
                        print(f"step {done}/{total_steps} loss {last_loss:.4f} lr {lr_now:.3e}", flush=True)
                    window = []
                if done % cfg.checkpoint_every == 0 or done == stop or stopping:
                    save(done)
                if stopping:
                    interrupted = signals.signal or "another rank"
                    break
        finally:
            signals.restore()
        bar.close()
        if interrupted is not None:
            if info.is_main:
                print(f"received signal {interrupted}: saved step {done} of {total_steps} to {last}; rerun the same "
                      "command to resume", flush=True)  # fmt: skip
            return {"step": done, "checkpoint": str(last), "interrupted": interrupted}
    train_seconds = time.perf_counter() - t_train
    if stop < total_steps:
        return {"step": stop, "checkpoint": str(last)}

    # ---- evaluate (every val image once over the ranks; detections gathered on rank 0)
    t_eval = time.perf_counter()
    n_val = len(val_ds) if cfg.max_val_images <= 0 else min(cfg.max_val_images, len(val_ds))
    mine = list(range(n_val))[info.rank :: info.world_size]
    dets, eval_ids = predict(model, val_ds, mine, device, batch_size=per_rank, workers=min(cfg.workers, 2),
                             autocast=autocast, progress=progress and info.is_main)  # fmt: skip
    if info.enabled:
        gathered: list[Any] = [None] * info.world_size
        torch.distributed.all_gather_object(gathered, (dets, eval_ids))
        dets = [d for part, _ in gathered for d in part]
        eval_ids = [i for _, part in gathered for i in part]
    ground_truth = val_ds.coco_ground_truth() if info.is_main else None
    box: list[Any] = [None]
    if info.is_main:
        box[0] = coco_evaluate(ground_truth, dets, classes, image_ids=eval_ids)
    if info.enabled:
        torch.distributed.broadcast_object_list(box, src=0)
    metrics = box[0]
    eval_seconds = time.perf_counter() - t_eval

    # ---- results
    summary = metrics.pop("summary")
    method = {"weights": str(backbone_spec), **bb_desc, **(method or {})}
    results = {
        "schema": "poodle.results/1",
        "task": "detection",
        "poodle_version": _version(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        "dataset": dataset_name,
        "split": "val",
        "classes": classes,
        "method": method,
        "readout": READOUT_NAMES[cfg.head],
        "head": cfg.head,
        "steps": total_steps,
        "epochs": round(total_steps / spe, 3),
        "batch_size": cfg.batch_size,
        "trained_parameters": n_trained,
        "metrics": metrics,
        **logged,
        "config": cfg.to_dict(),
        "data_check": data_check,
        "timings": {
            "seconds": round(time.perf_counter() - t_start, 1),
            "train_seconds": round(train_seconds, 1),
            "eval_seconds": round(eval_seconds, 1),
            "resumed_from_step": start_step,
            "world_size": info.world_size,
            "device": str(device),
        },  # fmt: skip
    }
    if info.is_main:
        (out_dir / "coco_eval.txt").write_text(summary)
        atomic_save({"kind": "poodle.detector/1", "head": cfg.head, "state": trained_state(model),
                     "config": cfg.to_dict(), "classes": classes, "backbone": str(backbone_spec),
                     "step": total_steps}, out_dir / "detector.pt")  # fmt: skip
        if cfg.figures > 0:
            results["figures"] = {"detections": str(detection_figure(model, val_ds, classes, cfg, device,
                                                                     out_dir / "figures" / "detections.png",
                                                                     dataset_name))}  # fmt: skip
        write_results(results, out_dir / "results.json")
        label = str(method.get("name") or Path(str(backbone_spec)).name)
        (out_dir / "table.md").write_text(detection_tables(results, label))
    barrier(info)
    return results


def _version() -> str:
    from poodle import __version__

    return __version__


# ---------------------------------------------------------------------------------------------------------------
# figure

# One colour per class (category id 1..10), distinct on road scenes; crowd / ignored regions are drawn grey.
CLASS_COLOURS = ((230, 25, 75), (245, 130, 48), (60, 180, 75), (0, 130, 200), (145, 30, 180), (70, 240, 240),
                 (240, 50, 230), (210, 245, 60), (255, 225, 25), (0, 0, 128))  # fmt: skip
IGNORE_COLOUR = (128, 128, 128)
FIGURE_MAX_BOXES = 25  # predictions drawn per image at most (the highest scores)


@torch.no_grad()
def detection_figure(model: nn.Module, dataset, classes: Sequence[str], cfg: DetectionConfig, device: torch.device,
                     path: Path, dataset_name: str = "") -> Path:  # fmt: skip
    """figures/detections.png: one row per val image (the first `cfg.figures`): ground truth | predictions with a
    score >= `cfg.figure_score`, boxes in class colours labelled with the class (and score), crowd / ignored ground
    truth in grey; a title above and a class legend below."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    model.eval()
    rows = []
    for i in range(min(cfg.figures, len(dataset))):
        item = dataset[i]
        out = model([item["image"].to(device).float().div(255.0)])[0]
        keep = torch.nonzero(out["scores"] >= cfg.figure_score).flatten()[:FIGURE_MAX_BOXES]  # sorted by score
        image = item["image"].permute(1, 2, 0).cpu().numpy()
        scale = max(1, math.ceil(320 / max(1, min(image.shape[:2]))))  # tiny frames drawn larger, text readable
        gt_boxes = torch.as_tensor(item["boxes"]).reshape(-1, 4).tolist()
        gt_labels = torch.as_tensor(item["labels"]).reshape(-1).tolist()
        region = (torch.as_tensor(item["iscrowd"]).reshape(-1) | torch.as_tensor(item["ignore"]).reshape(-1)).tolist()
        gt = [(b, int(c), None, bool(r)) for b, c, r in zip(gt_boxes, gt_labels, region)]
        pred = [(b, int(c), float(s), False) for b, c, s in zip(out["boxes"][keep].cpu().tolist(),
                                                                out["labels"][keep].cpu().tolist(),
                                                                out["scores"][keep].cpu().tolist())]  # fmt: skip
        rows.append([_draw_boxes(image, boxes, classes, scale, font) for boxes in (gt, pred)])
    gap, band, legend_h = 6, 34, 22
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    where = f" on {dataset_name}" if dataset_name else ""
    title = (f"Faster R-CNN {cfg.head.upper()} readout (frozen backbone){where} val: ground truth (left) | "
             f"predictions, score >= {cfg.figure_score:g}, top {FIGURE_MAX_BOXES} (right)")  # fmt: skip
    note = "grey dashed: crowd / ignored ground-truth regions (not scored)"
    legend = [(str(name), CLASS_COLOURS[c % len(CLASS_COLOURS)]) for c, name in enumerate(classes)]
    legend_w = sum(28 + int(measure.textlength(n, font=font)) for n, _ in legend) + 4
    panels_w = max((r[0].width + gap + r[1].width for r in rows), default=0)
    panels_h = sum(r[0].height for r in rows) + gap * max(0, len(rows) - 1)
    width = max(panels_w, legend_w, int(measure.textlength(title, font=font)) + 8)
    canvas = Image.new("RGB", (width, band + panels_h + legend_h + 4), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 3), title, fill="black", font=font)
    draw.text((4, 18), note, fill=(90, 90, 90), font=font)
    y = band
    for gt_panel, pred_panel in rows:
        canvas.paste(gt_panel, (0, y))
        canvas.paste(pred_panel, (gt_panel.width + gap, y))
        y += gt_panel.height + gap
    x, y = 4, band + panels_h + 4
    for name, colour in legend:
        draw.rectangle([x, y + 3, x + 10, y + 13], fill=colour, outline="black")
        draw.text((x + 14, y + 2), name, fill="black", font=font)
        x += 28 + int(draw.textlength(name, font=font))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def _draw_boxes(image: np.ndarray, boxes: list, classes: Sequence[str], scale: int, font) -> Any:
    from PIL import Image, ImageDraw

    panel = Image.fromarray(np.ascontiguousarray(image))
    if scale > 1:
        panel = panel.resize((panel.width * scale, panel.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(panel)
    for (x1, y1, x2, y2), c, score, region in boxes:
        box = [x1 * scale, y1 * scale, max(x1 * scale, x2 * scale - 1), max(y1 * scale, y2 * scale - 1)]
        if region:
            _dashed_rectangle(draw, box, IGNORE_COLOUR)
            continue
        colour = CLASS_COLOURS[(c - 1) % len(CLASS_COLOURS)]
        draw.rectangle(box, outline=colour, width=2)
        name = classes[c - 1] if 1 <= c <= len(classes) else str(c)
        text = name if score is None else f"{name} {score:.2f}"
        tw = int(draw.textlength(text, font=font))
        ty = max(0, box[1] - 11)
        draw.rectangle([box[0], ty, box[0] + tw + 3, ty + 11], fill=colour)
        draw.text((box[0] + 2, ty), text, fill="black" if sum(colour) > 380 else "white", font=font)
    return panel


def _dashed_rectangle(draw, box: list[float], colour: tuple[int, int, int], dash: int = 4) -> None:
    x1, y1, x2, y2 = box
    for a, b, horizontal, fixed in ((x1, x2, True, y1), (x1, x2, True, y2), (y1, y2, False, x1), (y1, y2, False, x2)):
        t = a
        while t < b:
            e = min(t + dash, b)
            draw.line([(t, fixed), (e, fixed)] if horizontal else [(fixed, t), (fixed, e)], fill=colour, width=1)
            t += 2 * dash
