"""`ReadoutConfig`: the pinned recipe of a segmentation readout (linear or UperNet), loaded from a shipped YAML.

Shipped recipes live next to the pretraining configs as `configs/readout_<dataset>[_cpu].yaml` and
`configs/upernet_<dataset>[_cpu].yaml`; keys are flat (`steps=200`, `crop_size=[64,128]`). Loading, `base:`
inheritance, typed `key=value` overrides and unknown-key errors are those of `poodle.config`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from poodle.config import ConfigError, _choice, _in_range, _interval, _positive, load_typed


@dataclass
class ReadoutConfig:
    name: str = "readout_bdd100k"
    # ---- head
    head: str = "linear"  # linear | upernet
    kernel: int = 1  # linear head: 1 (1x1 conv) or 3 (3x3 dilated conv, DeepLab-v1 style)
    dilation: int = 6  # dilation of the 3x3 linear head (ignored for kernel 1)
    bn: bool = True  # BatchNorm before the linear classifier (mmseg BNHead/FCNHead-style; folds into the conv)
    features: str = "auto"  # auto | sdm | layer4 (linear head input; UperNet always uses layer1..4)
    finetune: bool = False  # UperNet only: train the backbone too (linear readouts are always frozen)
    # Recompute the frozen backbone's (and SDM's) BatchNorm running statistics on this many train images (the head's
    # training crops, in batches) before the head is trained; 0 = off, the paper's frozen protocol. See
    # docs/evaluation.md.
    recompute_bn: int = 0
    # Per-class weights of the head's cross-entropy: none (the paper's plain loss) | median_frequency (Eigen & Fergus
    # 2015 / SegNet: w_c = median_k f_k / f_c, f_c = pixels of c over the pixels of the train images containing c;
    # 0 for a class absent from train). Lets a short readout on few images learn classes of a few pixels.
    class_weight: str = "none"
    backbone_lr_mult: float = 0.1  # finetune: backbone lr = lr * this
    upernet_channels: int = 512
    dropout: float = 0.1  # before the classifier (UperNet; 0 for linear)
    # ---- optimisation
    steps: int = 60_000
    batch_size: int = 16  # global (all ranks)
    lr: float = 0.02
    min_lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    power: float = 0.9  # poly schedule: lr = (lr - min_lr) * (1 - t / T) ** power + min_lr
    # ---- data
    crop_size: tuple[int, int] = (512, 1024)  # (H, W) random crop for training
    scale_range: tuple[float, float] = (0.5, 2.0)  # random resize ratio applied to base_size
    base_size: int | None = 1024  # shorter side before the ratio (None = native size)
    eval_resize: int | None = None  # shorter side of val images (None = native size)
    inference: str = "whole"  # whole | slide
    slide_crop: tuple[int, int] | None = None  # slide window (None = crop_size)
    slide_stride: tuple[int, int] | None = None  # slide stride (None = 2/3 of the window, mmseg-like)
    max_val_images: int = 0  # 0 = the whole val split
    label_encoding: str = "auto"  # WT-Sem masks: auto (read off the train masks) | zero_based | one_based
    # ---- running
    workers: int = 4
    seed: int = 0
    eval_every: int = 0  # also evaluate every N steps (0 = only at the end)
    log_every: int = 50
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    figures: int = 4  # val images shown in the figures (0 = no figures)

    def validate(self) -> ReadoutConfig:
        _choice("head", self.head, ("linear", "upernet"))
        if self.kernel not in (1, 3):
            raise ConfigError(f"kernel must be 1 or 3, got {self.kernel!r}")
        _positive("dilation", self.dilation)
        _choice("features", self.features, ("auto", "sdm", "layer4"))
        if self.finetune and self.head == "linear":
            raise ConfigError("finetune=true needs head=upernet: the linear readout is always frozen")
        _positive("steps", self.steps)
        _positive("batch_size", self.batch_size)
        _positive("lr", self.lr)
        _in_range("min_lr", self.min_lr, 0.0, self.lr)
        _in_range("momentum", self.momentum, 0.0, 1.0)
        _in_range("dropout", self.dropout, 0.0, 1.0)
        _positive("upernet_channels", self.upernet_channels)
        _positive("backbone_lr_mult", self.backbone_lr_mult)
        if self.recompute_bn < 0:
            raise ConfigError(f"recompute_bn must be >= 0 (a number of train images; 0 = off), got {self.recompute_bn}")
        _choice("class_weight", self.class_weight, ("none", "median_frequency"))
        _choice("label_encoding", self.label_encoding, ("auto", "zero_based", "one_based"))
        for i, side in enumerate(self.crop_size):
            _positive(f"crop_size[{i}]", side)
        _interval("scale_range", self.scale_range, 1e-3, 100.0)
        _choice("inference", self.inference, ("whole", "slide"))
        _choice("device", self.device, ("auto", "cpu", "cuda"))
        _positive("log_every", self.log_every)
        return self

    @property
    def window(self) -> tuple[int, int]:
        return tuple(self.slide_crop or self.crop_size)

    @property
    def stride(self) -> tuple[int, int]:
        if self.slide_stride is not None:
            return tuple(self.slide_stride)
        return tuple(max(1, (2 * s) // 3) for s in self.window)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def default_config_name(head: str, dataset: str) -> str:
    return f"{'readout' if head == 'linear' else 'upernet'}_{dataset}"


def load_readout_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> ReadoutConfig:
    """A shipped recipe (`readout_bdd100k`, `upernet_ade20k_cpu`, ...) or a YAML path, plus `key=value` overrides."""
    return load_typed(ReadoutConfig, name_or_path, overrides)
