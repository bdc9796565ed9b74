"""Typed configuration: dataclasses, YAML files shipped with the package, and `key.sub=value` overrides.

A config file is YAML with the sections below. It may name a parent with `base: NAME_OR_PATH`; the child's
values are merged over the parent's. Every key is checked against the dataclasses: an unknown key is an error
that names the key, the valid keys and the closest match. The resolved config is a plain dict
(`asdict(cfg)`) that every checkpoint stores, and `from_dict` rebuilds it.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key or value is wrong; the message says which and what is valid."""


# ----------------------------------------------------------------------------------------------- sections


@dataclass
class ModelConfig:
    """Encoder, spatial decoder module (SDM) and projection heads."""

    arch: str = "resnet50"  # resnet18 | resnet34 | resnet50
    dilated: bool = False  # output stride 8 (FlowE's encoder; rows without top-down in the paper's Table 4)
    decoder_top_down: bool = True  # SDM Bottleneck + 2x upsample stages
    decoder_lateral: bool = True  # SDM 1x1 lateral connections from layer3/layer2
    decoder_bottleneck_first: bool = True  # Bottleneck at coarse res, then upsample
    decoder_reduction: int = 8  # Bottleneck width = decoder channels / reduction (2048 -> 256)
    proj_hidden_dim: int = 4096
    proj_out_dim: int = 256
    # Bias of the first 1x1 conv of every projector/predictor; it sits right before a BatchNorm, which removes it.
    # The release's PooDLe has it, its in-house FlowE does not.
    head_bias: bool = True
    init: str = "random"  # random | imagenet:PATH (torchvision ResNet state dict file)

    def validate(self) -> None:
        _choice("model.arch", self.arch, ("resnet18", "resnet34", "resnet50"))
        _positive("model.decoder_reduction", self.decoder_reduction)
        _positive("model.proj_hidden_dim", self.proj_hidden_dim)
        _positive("model.proj_out_dim", self.proj_out_dim)
        if self.init != "random" and not self.init.startswith("imagenet:"):
            raise ConfigError(f"model.init must be 'random' or 'imagenet:PATH', got {self.init!r}")


@dataclass
class ObjectiveConfig:
    """Which losses run and how they are weighted."""

    dense: bool = True
    pooled: bool = True
    dense_weight: float = 0.5
    pooled_weight: float = 0.5
    # Occlusion test of the dense mask: "ddflow" (PooDLe: |F + B'|^2 > a1 (|F|^2 + |B'|^2) + a2) or "absolute"
    # (the release's FlowE: |F + B'| > occlusion_threshold_px), with B' = backward flow sampled at p + F(p).
    occlusion: str = "ddflow"
    occlusion_alpha1: float = 0.1
    occlusion_alpha2: float = 0.5
    occlusion_threshold_px: float = 3.54  # "absolute" only; the release's 10 / sqrt(8)
    mask_out_of_frame: bool = True  # drop pixels whose flow leaves the frame (PooDLe); FlowE has no such mask
    # "exact" (pixel centres) or "release": the release's half-pixel feature warp (coordinates normalised by W - 1,
    # sampled with align_corners=False), for reproducing it bit for bit. Used by every warp of the dense target.
    warp_convention: str = "exact"
    # Bring the target branch's affine-valid mask along the flow into online pixels (true); the release
    # multiplies it in unwarped.
    warp_target_valid: bool = True
    dense_eps: float = 1e-7  # masked-mean denominator: sum(m) + eps (PooDLe 1e-7, FlowE 1e-6)
    # "unaffine_then_warp" (paper, default) or "warp_then_unaffine" (release)
    target_order: str = "unaffine_then_warp"
    ema_momentum: float = 0.996  # start of the cosine EMA schedule (ends at 1)
    # The release lets the subcrop pass update the encoder's BN running statistics too (true), leaving them about
    # half subcrop statistics; false (default) keeps them full-frame statistics. Training maths are the same.
    bn_stats_from_subcrops: bool = False
    dense_chunk: int = 2  # images per chunk of the full-resolution dense loss (memory); <= 0: all at once
    # How the stride-8 maps reach full resolution in the dense loss: "sequential" (upsample x8, undo the flip/affine,
    # warp: the paper's and release's resamplings, one after another) or "composed" (one bilinear read of the
    # stride-8 map at the composed coordinates; equal up to cell-edge and rotation terms, see docs/method.md).
    dense_resample: str = "sequential"

    def validate(self) -> None:
        if not (self.dense or self.pooled):
            raise ConfigError("objective: at least one of objective.dense / objective.pooled must be true")
        _choice("objective.target_order", self.target_order, ("unaffine_then_warp", "warp_then_unaffine"))
        _choice("objective.occlusion", self.occlusion, ("ddflow", "absolute"))
        _choice("objective.warp_convention", self.warp_convention, ("exact", "release"))
        _choice("objective.dense_resample", self.dense_resample, ("sequential", "composed"))
        _positive("objective.occlusion_threshold_px", self.occlusion_threshold_px)
        _positive("objective.dense_eps", self.dense_eps)
        _in_range("objective.ema_momentum", self.ema_momentum, 0.0, 1.0)


@dataclass
class SubcropConfig:
    """Flow-aware subcrops for the pooled loss."""

    num: int = 6  # K pairs per online image
    area: tuple[float, float] = (0.05, 0.3)  # online subcrop area, fraction of the global crop
    target_area_max: float = 0.3  # target area ~ U[s_online, target_area_max]
    ratio: tuple[float, float] = (0.75, 4.0 / 3.0)
    size: int = 192  # output side of every subcrop
    jitter: float = 0.10  # centre jitter as a fraction of the global crop's H and W
    tries: int = 5  # attempts to land the paired centre in bounds before the same-frame fallback
    # inside: online boxes kept inside the image; release: centres clamped from below only, so online boxes may run
    # past the bottom/right edge into zero padding (the authors' release)
    clamp: str = "inside"
    # resized_crop: exactly torchvision's resized_crop (bilinear, antialiased when shrinking, zero padding);
    # roi_align: one bilinear sample per output pixel, no antialias (faster, the pre-issue-12 behaviour)
    crop_mode: str = "resized_crop"

    def validate(self) -> None:
        _choice("subcrops.clamp", self.clamp, ("inside", "release"))
        _choice("subcrops.crop_mode", self.crop_mode, ("resized_crop", "roi_align"))
        _positive("subcrops.num", self.num)
        _positive("subcrops.size", self.size)
        _positive("subcrops.tries", self.tries)
        _interval("subcrops.area", self.area, 0.0, 1.0)
        _interval("subcrops.ratio", self.ratio, 0.0, float("inf"))
        _in_range("subcrops.target_area_max", self.target_area_max, self.area[0], 1.0)
        _in_range("subcrops.jitter", self.jitter, 0.0, 1.0)


@dataclass
class AugmentConfig:
    """Photometric and dense-branch geometric augmentation."""

    color_jitter_p: float = 0.8
    brightness: float = 0.8
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_frac: float = 0.1  # kernel side ~ 10 % of the crop side (rounded up to odd)
    blur_kernel: int = 0  # 0: sides from blur_kernel_frac; else this odd side on both axes (the release's FlowE: 51)
    affine: bool = True
    affine_scale: tuple[float, float] = (0.9, 1.1)
    affine_degrees: float = 10.0
    hflip_p: float = 0.5

    def validate(self) -> None:
        for name in ("color_jitter_p", "grayscale_p", "blur_p", "hflip_p"):
            _in_range(f"augment.{name}", getattr(self, name), 0.0, 1.0)
        _in_range("augment.hue", self.hue, 0.0, 0.5)
        _interval("augment.blur_sigma", self.blur_sigma, 0.0, float("inf"))
        if self.blur_kernel < 0 or (self.blur_kernel > 0 and self.blur_kernel % 2 == 0):
            raise ConfigError(
                f"augment.blur_kernel must be 0 (size from augment.blur_kernel_frac) or an odd kernel side, "
                f"got {self.blur_kernel!r}"
            )
        _interval("augment.affine_scale", self.affine_scale, 0.0, float("inf"))
        _in_range("augment.affine_degrees", self.affine_degrees, 0.0, 180.0)


@dataclass
class DataConfig:
    """Where frame pairs come from and how they are cropped."""

    dataset: str = "bdd100k"  # bdd100k | wt | folder | synthdrive | shards
    root: str = ""
    split: str = "train"
    resolution: tuple[int, int] = (512, 1024)  # global crop (H, W)
    canvas: tuple[int, int] = (1080, 1920)  # frames are resized to canvas * s before the crop
    scale: tuple[float, float] = (0.75, 1.25)  # s ~ U[scale]
    dt_frames: tuple[int, int] = (15, 30)  # inclusive range of frame gaps
    dt_seconds: float | None = None  # if set, overrides dt_frames using each video's fps
    repeat: int = 2  # R pairs drawn per video load (repeated sampling)
    # Start frame t of a pair: "release" = [0, len - dt_max) for every dt (the authors' randint(0, len - 30)),
    # "full" = [0, len - dt). Equal when dt is fixed (WT).
    start_range: str = "release"
    workers: int = 4

    def validate(self) -> None:
        _choice("data.dataset", self.dataset, ("bdd100k", "wt", "folder", "synthdrive", "shards"))
        _positive("data.resolution[0]", self.resolution[0])
        _positive("data.resolution[1]", self.resolution[1])
        _interval("data.scale", self.scale, 0.0, float("inf"))
        _interval("data.dt_frames", self.dt_frames, 0, 10**9)
        _positive("data.repeat", self.repeat)
        _choice("data.start_range", self.start_range, ("release", "full"))


@dataclass
class FlowConfig:
    """Optical flow source."""

    source: str = "raft_large"  # raft_large | raft_small | dis | gt
    weights: str = ""  # local weight file; empty = torch hub cache
    iters: int = 24

    def validate(self) -> None:
        _choice("flow.source", self.source, ("raft_large", "raft_small", "dis", "gt"))
        _positive("flow.iters", self.iters)


@dataclass
class OptimConfig:
    """Optimiser and per-step schedules."""

    optimizer: str = "adamw"  # adamw | lars | sgd
    lr: float = 5e-4
    min_lr: float = 0.0
    weight_decay: float = 0.01
    weight_decay_end: float | None = None  # cosine weight-decay schedule to this value (DINO); None = constant
    momentum: float = 0.9  # sgd and lars
    clip_grad: float = 0.0  # clip each parameter's gradient norm to this (DINO's 3.0); 0 = off
    # Weight decay on biases and normalisation parameters too (MoCo/DenseCL's plain SGD decays every parameter);
    # false (default) exempts them, as timm's add_weight_decay, BYOL's and PixPro's LARS and DINO do.
    decay_norm_and_bias: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6
    batch_size: int = 128  # global number of pairs per step
    warmup_epochs: float = 2.0
    schedule_epochs: float = 300.0  # cosine horizon
    stop_epochs: float = 100.0  # where training stops (the release stops at 100 of 300)
    epoch_pairs: int = 0  # pairs per epoch; 0 = one pair per video of the dataset

    def validate(self) -> None:
        _choice("optim.optimizer", self.optimizer, ("adamw", "lars", "sgd"))
        if self.clip_grad < 0:
            raise ConfigError(f"optim.clip_grad must be >= 0 (0 = off), got {self.clip_grad}")
        _positive("optim.lr", self.lr)
        _positive("optim.batch_size", self.batch_size)
        if self.stop_epochs > self.schedule_epochs:
            raise ConfigError(
                f"optim.stop_epochs ({self.stop_epochs}) must be <= optim.schedule_epochs ({self.schedule_epochs})"
            )


# ---- baseline methods. Each section is used only when `method` names it; view sizes
# are (H, W) because the paper trains its R50 baselines on 512 x 1024 crops of BDD100K (v3).


@dataclass
class ByolConfig:
    """BYOL: two views, online predictor regresses the EMA target's projection."""

    views: str = "frames"  # frames: view 1 from frame a, view 2 from frame b of a pair; crops: both from frame a
    crop_size: tuple[int, int] = (224, 224)  # RandomResizedCrop output (H, W)
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 4.0 / 3.0)
    blur_p: tuple[float, float] = (1.0, 0.1)  # per view (BYOL's asymmetric recipe)
    solarize_p: tuple[float, float] = (0.0, 0.2)
    hidden_dim: int = 4096
    out_dim: int = 256
    ema_momentum: float = 0.996  # cosine to 1

    def validate(self) -> None:
        _choice("byol.views", self.views, ("frames", "crops"))
        _views_common("byol", self)


@dataclass
class DinoConfig:
    """DINO with a ResNet-50: multi-crop self-distillation with centring."""

    views: str = "frames"  # frames: global crop 1 (and half the locals) from frame a, the rest from frame b
    global_size: tuple[int, int] = (224, 224)
    global_scale: tuple[float, float] = (0.14, 1.0)  # the README's ResNet-50 command
    local_crops: int = 8
    local_size: tuple[int, int] = (96, 96)
    local_scale: tuple[float, float] = (0.05, 0.14)
    crop_ratio: tuple[float, float] = (0.75, 4.0 / 3.0)
    blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5)  # global 1, global 2, locals
    solarize_p: tuple[float, float, float] = (0.0, 0.2, 0.0)
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    use_bn_in_head: bool = False
    norm_last_layer: bool = True
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: float = 0.0
    # step: warmup_teacher_temp -> teacher_temp linearly per step over the warm-up epochs, then constant;
    # epoch: DINO's per-epoch staircase (np.linspace over int(warmup_teacher_temp_epochs) epochs), exactly
    teacher_temp_schedule: str = "step"
    center_momentum: float = 0.9
    freeze_last_layer_epochs: float = 1.0  # last-layer gradients dropped while step < this * steps_per_epoch
    ema_momentum: float = 0.996  # cosine to 1

    def validate(self) -> None:
        _choice("dino.views", self.views, ("frames", "crops"))
        if self.local_crops < 0:
            raise ConfigError(f"dino.local_crops must be >= 0, got {self.local_crops}")
        for name in ("global_size", "local_size"):
            _positive(f"dino.{name}[0]", getattr(self, name)[0])
            _positive(f"dino.{name}[1]", getattr(self, name)[1])
        _interval("dino.global_scale", self.global_scale, 0.0, 1.0)
        _interval("dino.local_scale", self.local_scale, 0.0, 1.0)
        _interval("dino.crop_ratio", self.crop_ratio, 0.0, float("inf"))
        for p in (*self.blur_p, *self.solarize_p):
            _in_range("dino.blur_p/solarize_p", p, 0.0, 1.0)
        for name in ("out_dim", "hidden_dim", "bottleneck_dim", "student_temp", "teacher_temp", "warmup_teacher_temp"):
            _positive(f"dino.{name}", getattr(self, name))
        _choice("dino.teacher_temp_schedule", self.teacher_temp_schedule, ("step", "epoch"))
        _in_range("dino.warmup_teacher_temp_epochs", self.warmup_teacher_temp_epochs, 0.0, float("inf"))
        _in_range("dino.freeze_last_layer_epochs", self.freeze_last_layer_epochs, 0.0, float("inf"))
        _in_range("dino.center_momentum", self.center_momentum, 0.0, 1.0)
        _in_range("dino.ema_momentum", self.ema_momentum, 0.0, 1.0)


@dataclass
class DenseCLConfig:
    """DenseCL: MoCo-v2 global + dense contrastive losses with queues."""

    views: str = "frames"
    crop_size: tuple[int, int] = (224, 224)
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 4.0 / 3.0)
    blur_p: tuple[float, float] = (0.5, 0.5)
    solarize_p: tuple[float, float] = (0.0, 0.0)
    queue_size: int = 65536
    hidden_dim: int = 2048
    out_dim: int = 128
    temperature: float = 0.2
    loss_lambda: float = 0.5  # (1 - lambda) * global + lambda * dense
    ema_momentum: float = 0.999  # constant (MoCo), no schedule
    shuffle_bn: bool = True  # MoCo's shuffle BN for the key encoder (across ranks under DDP)

    def validate(self) -> None:
        _choice("densecl.views", self.views, ("frames", "crops"))
        _views_common("densecl", self)
        _positive("densecl.queue_size", self.queue_size)
        _positive("densecl.temperature", self.temperature)
        _in_range("densecl.loss_lambda", self.loss_lambda, 0.0, 1.0)


@dataclass
class PixProConfig:
    """PixPro: pixel propagation module and pixel-to-propagation consistency."""

    views: str = "frames"
    crop_size: tuple[int, int] = (224, 224)
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 4.0 / 3.0)
    blur_p: tuple[float, float] = (1.0, 0.1)
    solarize_p: tuple[float, float] = (0.0, 0.2)
    hidden_dim: int = 4096
    out_dim: int = 256
    pos_ratio: float = 0.7  # positive if bin-centre distance / max bin diagonal < pos_ratio
    gamma: float = 2.0  # sharpness of the propagation similarity (pixpro-p)
    clamp: float = 0.0  # similarities below are set to it before the power
    transform_layers: int = 1  # value transform g: 0 (identity), 1 (1x1 conv) or 2 (conv-BN-ReLU-conv)
    ema_momentum: float = 0.99  # cosine to 1

    def validate(self) -> None:
        _choice("pixpro.views", self.views, ("frames", "crops"))
        _views_common("pixpro", self)
        _positive("pixpro.pos_ratio", self.pos_ratio)
        _positive("pixpro.gamma", self.gamma)
        _choice("pixpro.transform_layers", self.transform_layers, (0, 1, 2))


def _views_common(section: str, c: Any) -> None:
    _positive(f"{section}.crop_size[0]", c.crop_size[0])
    _positive(f"{section}.crop_size[1]", c.crop_size[1])
    _interval(f"{section}.crop_scale", c.crop_scale, 0.0, 1.0)
    _interval(f"{section}.crop_ratio", c.crop_ratio, 0.0, float("inf"))
    for p in (*c.blur_p, *c.solarize_p):
        _in_range(f"{section}.blur_p/solarize_p", p, 0.0, 1.0)
    _positive(f"{section}.hidden_dim", c.hidden_dim)
    _positive(f"{section}.out_dim", c.out_dim)
    _in_range(f"{section}.ema_momentum", c.ema_momentum, 0.0, 1.0)


@dataclass
class RunConfig:
    """Everything about running, not about the method."""

    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "bf16"  # bf16 (autocast on GPU) | fp32
    channels_last: bool = True
    compile: bool = False
    log_every: int = 10
    ckpt_every: int = 500
    keep_every: int = 0  # also keep a snapshot every N steps (0 = only last.pt)
    # Feature collapse: a logged `*_std` spread (~1 healthy) below the threshold warns; after `collapse_patience`
    # logged steps in a row the run stops without saving (0 = warn only).
    collapse_threshold: float = 0.01
    collapse_patience: int = 10

    def validate(self) -> None:
        _choice("run.device", self.device, ("auto", "cpu", "cuda"))
        if not 0 <= self.collapse_threshold < 1:
            raise ConfigError(f"run.collapse_threshold must be in [0, 1), got {self.collapse_threshold}")
        if self.collapse_patience < 0:
            raise ConfigError(f"run.collapse_patience must be >= 0 (0 = warn only), got {self.collapse_patience}")
        _choice("run.precision", self.precision, ("bf16", "fp32"))
        _positive("run.log_every", self.log_every)
        _positive("run.ckpt_every", self.ckpt_every)


METHODS = ("poodle", "byol", "dino", "densecl", "pixpro")


@dataclass
class Config:
    name: str = "poodle_bdd100k"
    # Which method trains: poodle (PooDLe, its ablations and FlowE: model/objective/subcrops sections), byol,
    # dino, densecl or pixpro (their own sections; model.arch/dilated/init set the backbone for all).
    method: str = "poodle"
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    subcrops: SubcropConfig = field(default_factory=SubcropConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    byol: ByolConfig = field(default_factory=ByolConfig)
    dino: DinoConfig = field(default_factory=DinoConfig)
    densecl: DenseCLConfig = field(default_factory=DenseCLConfig)
    pixpro: PixProConfig = field(default_factory=PixProConfig)

    def validate(self) -> Config:
        _choice("method", self.method, METHODS)
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if dataclasses.is_dataclass(section):
                section.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))


# ----------------------------------------------------------------------------------------------- checks


def _choice(key: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{key} = {value!r} is not valid; choose one of: {', '.join(valid)}")


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key} must be > 0, got {value!r}")


def _in_range(key: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise ConfigError(f"{key} must be in [{lo}, {hi}], got {value!r}")


def _interval(key: str, value: tuple, lo: float, hi: float) -> None:
    a, b = value
    if not (lo <= a <= b <= hi):
        raise ConfigError(f"{key} must be (low, high) with {lo} <= low <= high <= {hi}, got {tuple(value)!r}")


# ----------------------------------------------------------------------------------------------- building


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotation `tp` (after `from __future__ import annotations` resolution)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, args[0])
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key} must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    return value


def _unknown_key(key: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
    return ConfigError(f"unknown config key {key!r}.{hint} Valid keys here: {', '.join(prefix + v for v in valid)}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise _unknown_key(full, names)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{full} must be a mapping of keys, got {value!r}")
            kwargs[key] = _build(tp, value, prefix=f"{full}.")
        else:
            kwargs[key] = _coerce(full, value, tp)
    return cls(**kwargs)


def from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a Config from a (possibly partial) nested dict."""
    return _build(Config, data).validate()


def build_typed(cls: type[T], data: dict[str, Any]) -> T:
    """Build any config dataclass from a (possibly partial) nested dict; calls its `validate()` if it has one."""
    obj = _build(cls, data)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# Shipped configs whose names start with these are segmentation-readout recipes (`ReadoutConfig`), not
# pretraining configs; they share the folder because package data globs configs/*.yaml.
READOUT_PREFIXES = ("readout_", "upernet_")
DETECTION_PREFIXES = ("detection_",)
FLOW_TRAIN_PREFIXES = ("flow_train_",)  # `poodle flow train` recipes (poodle.flowtrain.config)


def shipped_configs(kind: str = "pretrain") -> list[str]:
    """Names of the configs shipped with the package (`poodle/configs/*.yaml`).

    kind: "pretrain" (the `Config` files), "readout" (segmentation: `readout_*` / `upernet_*`), "detection"
    (`detection_*`), "flow_train" (`flow_train_*`) or "all".
    """
    root = resources.files("poodle") / "configs"
    names = sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))
    if kind == "all":
        return names
    if kind == "readout":
        return [n for n in names if n.startswith(READOUT_PREFIXES)]
    if kind == "detection":
        return [n for n in names if n.startswith(DETECTION_PREFIXES)]
    if kind == "flow_train":
        return [n for n in names if n.startswith(FLOW_TRAIN_PREFIXES)]
    if kind != "pretrain":
        raise ValueError(f"kind must be pretrain, readout, detection, flow_train or all, got {kind!r}")
    return [n for n in names if not n.startswith(READOUT_PREFIXES + DETECTION_PREFIXES + FLOW_TRAIN_PREFIXES)]


def _read_yaml(name_or_path: str, _seen: tuple[str, ...] = ()) -> dict:
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file not found: {name_or_path}")
        text = path.read_text()
    else:
        res = resources.files("poodle") / "configs" / f"{name_or_path}.yaml"
        if not res.is_file():
            raise ConfigError(
                f"unknown config {name_or_path!r}; shipped configs: {', '.join(shipped_configs('all'))} "
                "(or give a path to a .yaml file)"
            )
        text = res.read_text()
    if name_or_path in _seen:
        raise ConfigError(f"config inheritance loop: {' -> '.join((*_seen, name_or_path))}")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{name_or_path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{name_or_path}: a config must be a mapping at top level")
    parent = data.pop("base", None)
    if parent is not None:
        data = _merge(_read_yaml(parent, (*_seen, name_or_path)), data)
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """`optim.lr=1e-3` -> (["optim", "lr"], 0.001). Values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: cannot parse value: {e}") from e
    if isinstance(value, str):
        # YAML 1.1 reads 1e-3 as a string; accept plain float syntax too.
        try:
            value = float(value) if value.lower() not in ("nan", "inf", "-inf") else value
        except ValueError:
            pass
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Set each `key.sub=value` override in the nested dict `data` (in place; also returned)."""
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {k!r} is not a section")
        node[keys[-1]] = value
    return data


def load_typed(cls: type[T], name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Any config dataclass from a shipped name or YAML path (with `base:` inheritance) plus overrides."""
    data = _read_yaml(name_or_path)
    if "name" in {f.name for f in dataclasses.fields(cls)}:
        data.setdefault("name", Path(name_or_path).stem)
    return build_typed(cls, apply_overrides(data, overrides))


def load_config(name_or_path: str = "poodle_bdd100k", overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a shipped config by name (or a YAML path), apply `key.sub=value` overrides, validate."""
    return load_typed(Config, name_or_path, overrides)
