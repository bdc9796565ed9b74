"""Backbones to read out: a poodle run/checkpoint, a torchvision ResNet state dict, `imagenet:PATH` or `random`.

`load_backbone(spec)` returns a `FeatureBackbone` whose `forward` gives layer1..layer4 (and `sdm` when a PooDLe
decoder is kept). Loading torchvision weights into a dilated encoder is exact (same names and shapes), so an
external R50 is read out at output stride 8 like FlowE's protocol by passing `dilated=True`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from poodle.engine.checkpoint import CheckpointError, safe_load
from poodle.model import ResNetEncoder, SpatialDecoder, clean_state_dict
from poodle.model.encoder import ARCHS, IGNORED_PREFIXES

FEATURES = ("layer1", "layer2", "layer3", "layer4", "sdm")


class BackboneError(ValueError):
    """The backbone spec cannot be loaded; the message says what was expected and what was found."""


class FeatureBackbone(nn.Module):
    """ResNet encoder (+ optional SDM) returning a dict of dense feature maps.

    Frozen (the default): no parameter requires grad and the module stays in eval mode even under `.train()`,
    so BatchNorm uses its running statistics. `unfreeze()` makes it trainable (UperNet finetune).
    """

    def __init__(self, encoder: ResNetEncoder, decoder: SpatialDecoder | None, source: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.source = source  # "poodle" | "state_dict" | "imagenet" | "random"
        self.arch = encoder.arch
        self.dilated = encoder.dilated
        c1 = encoder.layer1[-1].conv3.out_channels if hasattr(encoder.layer1[-1], "conv3") else 64
        c2, c3, c4 = encoder.channels
        self.channels: dict[str, int] = {"layer1": c1, "layer2": c2, "layer3": c3, "layer4": c4}
        s2, s3, s4 = encoder.strides
        self.strides: dict[str, int] = {"layer1": 4, "layer2": s2, "layer3": s3, "layer4": s4}
        if decoder is not None:
            self.channels["sdm"], self.strides["sdm"] = decoder.channels, 8
        self.frozen = False
        self.freeze()

    def freeze(self) -> FeatureBackbone:
        self.frozen = True
        self.requires_grad_(False)
        return super().train(False)

    def unfreeze(self) -> FeatureBackbone:
        self.frozen = False
        self.requires_grad_(True)
        return self

    def train(self, mode: bool = True) -> FeatureBackbone:
        return super().train(mode and not self.frozen)

    def resolve_features(self, features: str) -> str:
        """`auto` -> `sdm` when there is a decoder, else `layer4`; errors for `sdm` without a decoder."""
        if features == "auto":
            return "sdm" if self.decoder is not None else "layer4"
        if features not in self.channels:
            have = ", ".join(self.channels)
            raise BackboneError(f"feature map {features!r} is not available from this backbone (it has: {have})")
        return features

    def readout_channels(self, features: str) -> int:
        return self.channels[self.resolve_features(features)]

    def forward(self, x: torch.Tensor, with_sdm: bool = True) -> dict[str, torch.Tensor]:
        # layer1 is computed here (not in ResNetEncoder.forward) because only UperNet needs it.
        e = self.encoder
        c1 = e.layer1(e.maxpool(e.relu(e.bn1(e.conv1(x)))))
        c2 = e.layer2(c1)
        c3 = e.layer3(c2)
        c4 = e.layer4(c3)
        out = {"layer1": c1, "layer2": c2, "layer3": c3, "layer4": c4}
        if with_sdm and self.decoder is not None:
            out["sdm"] = self.decoder(out)
        return out


def infer_arch(state: Mapping[str, torch.Tensor]) -> str:
    """resnet18/34/50 from the keys of a torchvision ResNet state dict (Bottleneck has conv3; 34 has layer3.5)."""
    if "conv1.weight" not in state or "layer4.0.conv1.weight" not in state:
        found = ", ".join(list(state)[:6]) + (", ..." if len(state) > 6 else "")
        raise BackboneError(
            "expected a torchvision ResNet-18/34/50 state dict (keys conv1.weight, layer1.0.conv1.weight, ..., "
            f"layer4.*) but found keys: {found}"
        )
    if "layer1.0.conv3.weight" in state:
        return "resnet50" if "layer3.5.conv1.weight" in state and "layer3.6.conv1.weight" not in state else "other"
    return "resnet34" if "layer3.5.conv1.weight" in state else "resnet18"


def _load_state_dict_file(path: Path) -> dict:
    if not path.is_file():
        raise BackboneError(f"backbone weights not found: {path}")
    try:
        obj = safe_load(path, what="backbone weights")
    except CheckpointError as e:  # empty, truncated, not a torch file, or pickled objects (refused, never run)
        raise BackboneError(str(e)) from e
    if not isinstance(obj, Mapping):
        raise BackboneError(f"{path} does not hold a state dict (found a {type(obj).__name__})")
    return dict(obj)


def _encoder_from_state(state: dict, path: Path, arch: str | None, dilated: bool) -> ResNetEncoder:
    try:
        state = clean_state_dict(state)
    except ValueError as e:
        raise BackboneError(f"{path}: {e}") from e
    state = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
    found = infer_arch(state)
    if found not in ARCHS:
        raise BackboneError(f"{path}: a Bottleneck ResNet deeper than resnet50 is not supported (expected {ARCHS})")
    if arch is not None and arch != found:
        raise BackboneError(f"{path} holds {found} weights but --arch {arch} was given")
    encoder = ResNetEncoder(found, dilated=dilated)
    result = encoder.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise BackboneError(
            f"{path} is not a complete {found} state dict: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    # Shapes are checked by load_state_dict itself (a size mismatch raises RuntimeError).
    return encoder


def _from_poodle(path: Path, arch: str | None, dilated: bool | None, keep_decoder: bool) -> FeatureBackbone:
    from poodle.engine.export import load_networks

    try:
        networks, ckpt = load_networks(path)
    except Exception as e:
        raise BackboneError(f"cannot load the poodle checkpoint {path}: {e}") from e
    stored = networks.encoder
    if arch is not None and arch != stored.arch:
        raise BackboneError(f"{path} is a {stored.arch} poodle checkpoint but --arch {arch} was given")
    decoder = networks.decoder if keep_decoder else None
    encoder = stored
    if dilated is not None and dilated != stored.dilated:
        # Same weights, other strides (exact); the SDM was built for the stored strides, so it is dropped.
        encoder = ResNetEncoder(stored.arch, dilated=dilated)
        encoder.load_state_dict(stored.state_dict())
        decoder = None
    return FeatureBackbone(encoder, decoder, source="poodle")


def _is_poodle_checkpoint(path: Path) -> bool:
    if path.is_dir():
        return True
    try:
        obj = safe_load(path, mmap=True)
    except CheckpointError:
        return False
    return isinstance(obj, Mapping) and "networks" in obj and "config" in obj


def load_backbone(
    spec: str | Path,
    arch: str | None = None,
    dilated: bool | None = None,
    keep_decoder: bool = True,
    branch: str = "auto",
) -> FeatureBackbone:
    """Build a frozen `FeatureBackbone` from `spec`.

    Published checkpoints load directly (read without running pickled code, `poodle.weights`): the authors'
    PooDLe/FlowE files (with their SDM), DINO full checkpoints, PixPro and MoCo/DenseCL training files; `branch`
    picks online or EMA weights (`auto`: each method's convention, DINO's teacher, the others' online network).

    - a poodle run folder or `.pt` training checkpoint: the ONLINE encoder (+ SDM if `keep_decoder`);
      `dilated=None` keeps the stored strides; a different value rebuilds the encoder and drops the SDM;
    - a `.pth` torchvision ResNet state dict (e.g. from `poodle export`): arch inferred from the keys;
    - `imagenet:PATH`: torchvision ImageNet weights from a local file (the "Supervised IN1K" row);
    - `random`: random init of `arch` (the "Scratch" row; seed torch before calling for reproducibility).
    External backbones default to `dilated=False`.
    """
    spec = str(spec)
    for prefix in ("ema:", "online:"):  # `poodle eval --branch`: which copy of a published checkpoint
        if spec.startswith(prefix):
            spec, branch = spec.removeprefix(prefix), prefix[:-1]
    if arch is not None and arch not in ARCHS:
        raise BackboneError(f"unknown arch {arch!r}; choose one of: {', '.join(ARCHS)}")
    if spec == "random":
        if arch is None:
            raise BackboneError("--weights random needs --arch (resnet18, resnet34 or resnet50)")
        return FeatureBackbone(ResNetEncoder(arch, dilated=bool(dilated)), None, source="random")
    if spec.startswith("imagenet:"):
        path = Path(spec.removeprefix("imagenet:"))
        return FeatureBackbone(_encoder_from_state(_load_state_dict_file(path), path, arch, bool(dilated)), None,
                               source="imagenet")  # fmt: skip
    path = Path(spec)
    if not path.exists():
        raise BackboneError(
            f"backbone not found: {spec} (give a poodle run folder, a checkpoint, a torchvision .pth, "
            "imagenet:PATH or random)"
        )
    if path.is_dir() or _is_poodle_checkpoint(path):
        if branch == "ema":
            raise BackboneError("--branch ema on a poodle run: export the EMA encoder with `poodle export --ema`")
        return _from_poodle(path, arch, dilated, keep_decoder)
    from poodle.weights.layouts import LayoutError, backbone_state, identify

    try:
        state = _load_state_dict_file(path)
        try:
            layout = identify(state)
        except LayoutError:
            layout = None  # _encoder_from_state names what it expected
    except BackboneError as plain_error:  # a published file with pickled objects (read safely) or unreadable
        state, layout = _load_foreign(path, plain_error)
    if layout in ("poodle_release", "flowe_release"):
        return _from_release(path, state, layout, branch, arch, dilated, keep_decoder)
    if layout is not None and (layout != "torchvision" or branch != "auto"):
        try:
            state, _ = backbone_state(state, layout, branch)
        except LayoutError as e:
            raise BackboneError(f"{path}: {e}") from e
    return FeatureBackbone(_encoder_from_state(state, path, arch, bool(dilated)), None, source="state_dict")


def _load_foreign(path: Path, plain_error: BackboneError) -> tuple[dict, str]:
    """Read a published checkpoint with the safe reader (no code from the file runs) and name its layout."""
    from poodle.weights.convert import ConvertError, read_checkpoint

    if "pickled Python objects" not in str(plain_error):
        raise plain_error
    try:
        obj, layout, _ = read_checkpoint(path)
    except ConvertError as e:
        raise BackboneError(str(e)) from e
    return obj, layout


def _from_release(path, obj, layout, branch, arch, dilated, keep_decoder) -> FeatureBackbone:
    """The authors' PooDLe/FlowE checkpoint read directly: online (default) or EMA encoder, with its SDM."""
    from poodle.weights.convert import ConvertError, release_networks
    from poodle.weights.layouts import resolve_branch

    try:
        _, networks, _ = release_networks(obj, layout)
    except ConvertError as e:
        raise BackboneError(f"{path}: {e}") from e
    ema = resolve_branch(layout, branch) == "ema"
    encoder = networks.target["encoder"] if ema else networks.encoder
    decoder = networks.target["decoder"] if ema and "decoder" in networks.target else networks.decoder
    if arch is not None and arch != encoder.arch:
        raise BackboneError(f"{path} is a {encoder.arch} checkpoint but --arch {arch} was given")
    if dilated is not None and dilated != encoder.dilated:
        rebuilt = ResNetEncoder(encoder.arch, dilated=dilated)
        rebuilt.load_state_dict(encoder.state_dict())
        encoder, decoder = rebuilt, None
    return FeatureBackbone(encoder, decoder if keep_decoder else None, source=layout)
