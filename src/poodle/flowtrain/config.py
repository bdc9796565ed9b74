"""`FlowTrainConfig`: the recipe of a label-free optical-flow run (`poodle flow train`), loaded from a shipped YAML.

Shipped recipes are `configs/flow_train_*.yaml`. Loading, `base:` inheritance, typed `key.sub=value` overrides and
unknown-key errors are those of `poodle.config`. The `data` section is the pretraining one (`DataConfig`), so a flow
model trains on exactly the pairs pretraining would read: videos, a folder, shards or SynthDrive.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from poodle.config import (
    ConfigError,
    DataConfig,
    _choice,
    _in_range,
    _positive,
    _to_plain,
    load_typed,
)

RAFT_MIN_SIDE = 128  # torchvision RAFT's correlation pyramid needs feature maps of at least 16 x 16 (1/8 scale)


@dataclass
class FlowModelConfig:
    """The network: torchvision RAFT."""

    size: str = "small"  # small | large
    iters: int = 12  # refinement updates while training (each is supervised by the sequence loss)
    init: str = ""  # "" = random initialisation (label-free); or a torchvision RAFT state dict file to start from

    def validate(self) -> None:
        _choice("model.size", self.size, ("small", "large"))
        _positive("model.iters", self.iters)


@dataclass
class FlowLossConfig:
    """UFlow / SMURF losses and their weights (defaults: SMURF's KITTI recipe with census, brox occlusion)."""

    census: float = 1.0  # photometric: 7x7 soft census (UFlow / SMURF default)
    ssim: float = 0.0  # photometric: SSIM (what PooDLe's UFlow port used instead of census)
    photo_blur: float = 0.0  # Gaussian sigma (px) applied to both frames before the photometric loss; 0 = off
    smooth1: float = 0.0  # first-order edge-aware smoothness
    smooth2: float = 2.0  # second-order edge-aware smoothness, at 1/4 resolution
    edge_constant: float = 150.0  # edge weight exp(-mean |150 * image gradient|)
    occlusion: bool = True  # forward-backward occlusion masking of the photometric loss
    occ_alpha1: float = 0.01  # occluded iff |F + B'|^2 > a1 (|F|^2 + |B'|^2) + a2 (DDFlow / UFlow 'brox')
    occ_alpha2: float = 0.5
    occlusion_after: int = 0  # step from which occlusions are masked (UFlow: after a few epochs)
    sequence_decay: float = 0.8  # update i of N weighs decay^(N - 1 - i)
    selfsup: float = 0.0  # self-supervision weight (SMURF 0.3, UFlow 0.6); 0 = off
    selfsup_after: int = 0  # step at which self-supervision starts
    selfsup_ramp: int = 0  # steps over which its weight ramps linearly from 0
    selfsup_margin: int = 16  # pixels cut from each side for the student's view (UFlow: 64 at 640 px)
    selfsup_sigma_teacher: float = 0.003
    selfsup_sigma_student: float = 0.03

    def validate(self) -> None:
        keys = ("census", "ssim", "photo_blur", "smooth1", "smooth2", "selfsup", "edge_constant", "occ_alpha1",
                "occ_alpha2")  # fmt: skip
        for key in keys:
            if getattr(self, key) < 0:
                raise ConfigError(f"loss.{key} must be >= 0, got {getattr(self, key)}")
        if self.census == 0 and self.ssim == 0:
            raise ConfigError("loss.census and loss.ssim are both 0: the flow needs a photometric loss")
        _in_range("loss.sequence_decay", self.sequence_decay, 0.0, 1.0)
        if self.sequence_decay == 0:
            raise ConfigError("loss.sequence_decay must be > 0")
        for key in ("occlusion_after", "selfsup_after", "selfsup_ramp", "selfsup_margin"):
            if getattr(self, key) < 0:
                raise ConfigError(f"loss.{key} must be >= 0, got {getattr(self, key)}")
        _positive("loss.selfsup_sigma_teacher", self.selfsup_sigma_teacher)
        _positive("loss.selfsup_sigma_student", self.selfsup_sigma_student)


@dataclass
class FlowOptimConfig:
    """Adam with a constant rate, linear warm-up, and SMURF's exponential decay at the end."""

    lr: float = 2e-4
    batch_size: int = 8  # global number of pairs per step
    steps: int = 75_000
    warmup_steps: int = 0
    decay_after: int = 0  # 0 = no decay; else lr halves every `decay_steps` from this step on
    decay_steps: int = 2_500
    clip_grad: float = 1.0  # global gradient-norm clip; 0 = off
    weight_decay: float = 0.0

    def validate(self) -> None:
        _positive("optim.lr", self.lr)
        _positive("optim.batch_size", self.batch_size)
        _positive("optim.steps", self.steps)
        _positive("optim.decay_steps", self.decay_steps)
        for key in ("warmup_steps", "decay_after", "clip_grad", "weight_decay"):
            if getattr(self, key) < 0:
                raise ConfigError(f"optim.{key} must be >= 0, got {getattr(self, key)}")


@dataclass
class FlowAugmentConfig:
    """Augmentation applied jointly to both frames of a pair (the losses compare the un-jittered frames)."""

    hflip: float = 0.5  # probability of mirroring a pair left-right
    vflip: float = 0.0
    swap: float = 0.5  # probability of swapping frame a and b (time reversal)
    brightness: float = 0.2  # photometric jitter of the network's input only (0 = off)
    contrast: float = 0.2

    def validate(self) -> None:
        for key in ("hflip", "vflip", "swap"):
            _in_range(f"augment.{key}", getattr(self, key), 0.0, 1.0)
        for key in ("brightness", "contrast"):
            _in_range(f"augment.{key}", getattr(self, key), 0.0, 1.0)


@dataclass
class FlowRunConfig:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "bf16"  # bf16 autocast of the network on GPU (losses in fp32) | fp32
    log_every: int = 10
    ckpt_every: int = 500
    keep_every: int = 0  # also keep a snapshot every N steps (0 = only last.pt)

    def validate(self) -> None:
        _choice("run.device", self.device, ("auto", "cpu", "cuda"))
        _choice("run.precision", self.precision, ("bf16", "fp32"))
        _positive("run.log_every", self.log_every)
        _positive("run.ckpt_every", self.ckpt_every)


@dataclass
class FlowTrainConfig:
    name: str = "flow_train"
    model: FlowModelConfig = field(default_factory=FlowModelConfig)
    loss: FlowLossConfig = field(default_factory=FlowLossConfig)
    augment: FlowAugmentConfig = field(default_factory=FlowAugmentConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(dataset="synthdrive", repeat=1))
    optim: FlowOptimConfig = field(default_factory=FlowOptimConfig)
    run: FlowRunConfig = field(default_factory=FlowRunConfig)

    def validate(self) -> FlowTrainConfig:
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if dataclasses.is_dataclass(section):
                section.validate()
        h, w = self.data.resolution
        if h % 8 or w % 8 or min(h, w) < RAFT_MIN_SIDE:
            raise ConfigError(
                f"data.resolution {h}x{w}: RAFT needs both sides to be multiples of 8 and at least {RAFT_MIN_SIDE} "
                "(its correlation pyramid works on 1/8-scale features of at least 16 x 16)"
            )
        if 2 * self.loss.selfsup_margin >= min(h, w):
            raise ConfigError(f"loss.selfsup_margin={self.loss.selfsup_margin} leaves nothing of a {h}x{w} crop")
        return self

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))


def load_flow_train_config(name_or_path: str = "flow_train_synthdrive_cpu", overrides=()) -> FlowTrainConfig:
    return load_typed(FlowTrainConfig, name_or_path, overrides)
