"""`DetectionConfig`: the pinned recipe of a detection readout (Faster R-CNN C4 or FPN on a frozen backbone).

Shipped recipes live next to the other configs as `configs/detection_<dataset>[_cpu].yaml`; keys are flat
(`steps=200`, `milestones=[8,11]`). Loading, `base:` inheritance, typed `key=value` overrides and unknown-key errors
are those of `poodle.config`. The full recipe (`detection_bdd100k`) is FlowE's C4 schedule as PooDLe reports it
(PooDLe paper, Sec. 6.2: 12 epochs, SGD, batch 16, lr 0.02, x0.1 at epochs 8 and 11, original resolution, no
multi-scale) with weight decay and warm-up from MMDetection's default 1x schedule (docs/evaluation.md, "Detection
readout").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from poodle.config import ConfigError, _choice, _in_range, _positive, load_typed

HEADS = ("c4", "fpn")
# Keys that may change between a run and its resume: they do not alter what is trained.
RESUMABLE_KEYS = ("name", "workers", "log_every", "checkpoint_every", "device", "figures", "figure_score",
                  "max_val_images")  # fmt: skip


@dataclass
class DetectionConfig:
    name: str = "detection_bdd100k"
    # ---- model
    head: str = "c4"  # c4 (res4 features, res5 box head) | fpn (layer1-4 + FPN, 2-fc box head)
    # C4 only: train the res5 box head (a copy of the pretrained layer4; its BatchNorm stays frozen). Off: the whole
    # pretrained ResNet is frozen and only the RPN and the box predictor learn (see docs/evaluation.md for why).
    c4_train_res5: bool = False
    # RPN proposal numbers; None = the head's default (C4: detectron2's 12000/6000 pre-NMS, 2000/1000 post-NMS;
    # FPN: torchvision's 2000/1000 per level pre-NMS, 2000/1000 post-NMS).
    rpn_pre_nms_top_n_train: int | None = None
    rpn_pre_nms_top_n_test: int | None = None
    rpn_post_nms_top_n_train: int | None = None
    rpn_post_nms_top_n_test: int | None = None
    box_batch_size_per_image: int = 512  # RoIs sampled per training image (detectron2 / torchvision: 512)
    # ---- optimisation
    epochs: int = 12
    steps: int = 0  # total training steps; 0 = epochs x (train images // batch_size)
    milestones: tuple[int, int] = (8, 11)  # lr x gamma at these epochs (scaled to the steps when steps > 0)
    gamma: float = 0.1
    batch_size: int = 16  # global (all ranks)
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1.0e-4
    warmup_steps: int = 500  # linear warm-up from lr x warmup_factor (MMDetection's LinearLR, by iteration)
    warmup_factor: float = 0.001
    # ---- data
    min_size: int = 720  # GeneralizedRCNNTransform: 720 / 1280 keep BDD100K's 720x1280 frames at their size
    max_size: int = 1280
    hflip: float = 0.5  # probability of a horizontal flip of a training image (MMDetection's RandomFlip)
    filter_empty_gt: bool = True  # train only on images with at least one (non-ignored) box (MMDetection default)
    max_train_images: int = 0  # 0 = the whole train split
    max_val_images: int = 0  # 0 = the whole val split
    # ---- running
    workers: int = 4
    seed: int = 0
    log_every: int = 20
    checkpoint_every: int = 1000  # OUT/last.pt every N steps (and at the end); resumed automatically
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = False  # bf16 autocast on CUDA (MMDetection trains in fp32 by default)
    figures: int = 4  # val images shown in figures/detections.png (0 = no figure)
    figure_score: float = 0.3  # predicted boxes drawn at or above this score

    def validate(self) -> DetectionConfig:
        _choice("head", self.head, HEADS)
        for key in ("rpn_pre_nms_top_n_train", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_train",
                    "rpn_post_nms_top_n_test"):  # fmt: skip
            value = getattr(self, key)
            if value is not None:
                _positive(key, value)
        _positive("box_batch_size_per_image", self.box_batch_size_per_image)
        _positive("epochs", self.epochs)
        if self.steps < 0:
            raise ConfigError(f"steps must be >= 0 (0 = epochs x steps per epoch), got {self.steps}")
        a, b = self.milestones
        if not 0 < a <= b <= self.epochs:
            raise ConfigError(f"milestones must be (a, b) with 0 < a <= b <= epochs ({self.epochs}), got {(a, b)}")
        _in_range("gamma", self.gamma, 0.0, 1.0)
        _positive("batch_size", self.batch_size)
        _positive("lr", self.lr)
        _in_range("momentum", self.momentum, 0.0, 1.0)
        _in_range("weight_decay", self.weight_decay, 0.0, 1.0)
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        _in_range("warmup_factor", self.warmup_factor, 0.0, 1.0)
        _positive("min_size", self.min_size)
        _positive("max_size", self.max_size)
        if self.max_size < self.min_size:
            raise ConfigError(f"max_size ({self.max_size}) must be >= min_size ({self.min_size})")
        _in_range("hflip", self.hflip, 0.0, 1.0)
        for key in ("max_train_images", "max_val_images", "workers", "figures"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        _positive("log_every", self.log_every)
        _positive("checkpoint_every", self.checkpoint_every)
        _choice("device", self.device, ("auto", "cpu", "cuda"))
        _in_range("figure_score", self.figure_score, 0.0, 1.0)
        return self

    def rpn_settings(self) -> dict[str, int]:
        """The RPN proposal numbers of this head, with the recipe's explicit values taking precedence."""
        if self.head == "c4":  # detectron2 defaults.py (RPN.PRE_NMS_TOPK_*, POST_NMS_TOPK_*)
            default = {"pre_nms_top_n_train": 12000, "pre_nms_top_n_test": 6000, "post_nms_top_n_train": 2000,
                       "post_nms_top_n_test": 1000}  # fmt: skip
        else:  # torchvision FasterRCNN defaults (per FPN level before NMS)
            default = {"pre_nms_top_n_train": 2000, "pre_nms_top_n_test": 1000, "post_nms_top_n_train": 2000,
                       "post_nms_top_n_test": 1000}  # fmt: skip
        return {k: getattr(self, f"rpn_{k}") or v for k, v in default.items()}

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def default_config_name(dataset: str) -> str:
    """`detection_bdd100k` for BDD100K; SynthDrive has only the CPU-scale recipe."""
    return "detection_synthdrive_cpu" if dataset == "synthdrive" else f"detection_{dataset}"


def load_detection_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> DetectionConfig:
    """A shipped recipe (`detection_bdd100k`, `detection_synthdrive_cpu`) or a YAML path, plus `key=value`."""
    return load_typed(DetectionConfig, name_or_path, overrides)
