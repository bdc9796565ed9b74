"""ResNet encoder: a torchvision ResNet without its classifier, returning layer2/3/4 features.

The torchvision submodules (conv1, bn1, layer1..layer4) sit at the top level of `ResNetEncoder`, so its
state dict has exactly torchvision's key names:
`torchvision.models.resnet50().load_state_dict(sd, strict=False)` reports only `fc.*` missing, and checkpoints
exported from here load into any torchvision-based readout.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

ARCHS = ("resnet18", "resnet34", "resnet50")
# Prefixes that wrappers (DDP, SSL frameworks) put in front of torchvision's key names.
STRIP_PREFIXES = ("module.", "backbone.", "encoder.")
# Keys of a torchvision ResNet state dict that the encoder does not have (the classifier).
IGNORED_PREFIXES = ("fc.",)


class ResNetEncoder(nn.Module):
    """torchvision ResNet-18/34/50 trunk; `forward` returns the stage outputs the SDM needs.

    `dilated=True` gives FlowE's output-stride-8 encoder: layer3 and layer4 keep stride 8 and use dilated 3x3
    convolutions (torchvision's `replace_stride_with_dilation=[False, True, True]`). torchvision refuses
    dilation in BasicBlock, so for resnet18/34 the same a-trous conversion is applied by hand (see
    `_dilate_basic_layer`); the weights keep their shapes and names, so any init loads unchanged.
    """

    def __init__(self, arch: str = "resnet50", dilated: bool = False, init: str = "random") -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown encoder arch {arch!r}; choose one of: {', '.join(ARCHS)}")
        self.arch = arch
        self.dilated = dilated
        builder = getattr(torchvision.models, arch)
        if arch == "resnet50":
            net = builder(weights=None, replace_stride_with_dilation=[False, dilated, dilated])
        else:
            net = builder(weights=None)
            if dilated:
                _dilate_basic_layer(net.layer3, previous_dilation=1)
                _dilate_basic_layer(net.layer4, previous_dilation=2)
        # Top-level torchvision modules => torchvision state-dict keys. fc and avgpool are dropped.
        self.conv1 = net.conv1
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool = net.maxpool
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.layer4 = net.layer4
        c2, c3, c4 = (_out_channels(layer) for layer in (net.layer2, net.layer3, net.layer4))
        self.channels: tuple[int, int, int] = (c2, c3, c4)
        # Output stride of (layer2, layer3, layer4).
        self.strides: tuple[int, int, int] = (8, 8, 8) if dilated else (8, 16, 32)
        if init != "random":
            if not init.startswith("imagenet:"):
                raise ValueError(f"encoder init must be 'random' or 'imagenet:PATH', got {init!r}")
            self.load_torchvision_weights(init.removeprefix("imagenet:"))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        c2 = self.layer2(x)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return {"layer2": c2, "layer3": c3, "layer4": c4}

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C4): global average of layer4 (the pooled branch uses layer4 directly, not the SDM)."""
        return self.forward(x)["layer4"].mean(dim=(2, 3))

    def torchvision_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict with torchvision key names (identical to `state_dict()`; detached copies)."""
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    def load_torchvision_weights(self, path: str | Path) -> None:
        """Load a torchvision ResNet state dict from a local file (never downloads).

        Accepts a bare state dict or one nested under "state_dict"/"model"; strips `module.`, `backbone.` and
        `encoder.` prefixes; ignores `fc.*`. Any other missing or unexpected key is an error naming the keys.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"encoder init file not found: {path}")
        from poodle.engine.checkpoint import CheckpointError, safe_load

        try:
            obj = safe_load(path, what="encoder init file")
        except CheckpointError as e:
            raise ValueError(str(e)) from e
        if not isinstance(obj, Mapping):
            raise ValueError(f"{path} does not hold a state dict (got {type(obj).__name__})")
        state = clean_state_dict(obj)
        state = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
        result = self.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"{path} is not a {self.arch} torchvision state dict: "
                f"{len(result.missing_keys)} missing keys {_preview(result.missing_keys)}, "
                f"{len(result.unexpected_keys)} unexpected keys {_preview(result.unexpected_keys)}"
            )


def clean_state_dict(obj: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """Unwrap a checkpoint to a flat state dict and strip wrapper prefixes from every key."""
    for nested in ("state_dict", "model"):
        if nested in obj and isinstance(obj[nested], Mapping):
            obj = obj[nested]
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError("checkpoint does not hold a state dict of tensors")
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        stripped = True
        while stripped:  # prefixes can stack, e.g. module.backbone.conv1.weight
            stripped = False
            for prefix in STRIP_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key.removeprefix(prefix), True
        out[key] = value
    return out


def _dilate_basic_layer(layer: nn.Sequential, previous_dilation: int) -> None:
    """Turn a stride-2 BasicBlock stage into a stride-1 dilated one (a-trous conversion).

    Same rule as torchvision's `_make_layer` for Bottleneck: the conv that used to stride keeps the previous
    dilation, every 3x3 conv after it gets dilation * 2; padding = dilation keeps the spatial size. The 1x1
    downsample shortcut just loses its stride.
    """
    dilation = previous_dilation * 2
    for i, block in enumerate(layer):
        assert isinstance(block, BasicBlock)
        first_dilation = previous_dilation if i == 0 else dilation
        _set_conv(block.conv1, dilation=first_dilation)
        _set_conv(block.conv2, dilation=dilation)
        block.stride = 1
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)


def _set_conv(conv: nn.Conv2d, dilation: int) -> None:
    conv.stride = (1, 1)
    conv.dilation = (dilation, dilation)
    conv.padding = (dilation, dilation)


def _out_channels(layer: nn.Sequential) -> int:
    last = layer[-1]
    return last.bn3.num_features if isinstance(last, Bottleneck) else last.bn2.num_features


def _preview(keys: list[str], n: int = 8) -> str:
    return "[" + ", ".join(keys[:n]) + (", ..." if len(keys) > n else "") + "]"
