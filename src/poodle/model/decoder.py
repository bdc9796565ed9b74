"""Spatial decoder module (SDM): our reading of the paper's decoder, where it is ambiguous.

Full SDM on a stride-32 encoder (widths for ResNet-50; all derived from the encoder channels C2, C3, C4):

    stage 0:  z = Bottleneck_0(layer4)                  # C4 -> C4/r -> C4/r -> C4, identity residual
              z = upsample_x2(z) + Conv1x1(C3 -> C4)(layer3)
    stage 1:  z = Bottleneck_1(z)
              z = upsample_x2(z) + Conv1x1(C2 -> C4)(layer2)
    output:   (B, C4, H/8, W/8), no norm/activation after the last add

`bottleneck_first=False` selects the paper's Eq. (3) order, z = Bottleneck(upsample(z)) + lateral.

Variants (the paper's Table 4; the wiring of rows 3-4 is our choice, as it was not released):
- `top_down=False`: no Bottleneck blocks and no upsampling. Only meaningful on the dilated (output stride 8)
  encoder, where layer2, layer3 and layer4 share the stride-8 grid; the output is layer4.
- `lateral=False`: no lateral 1x1 convs. With top-down this is row 3: layer4 -> Bottleneck/upsample twice.
- `top_down=False, lateral=True` (row 4): z = layer4 + Conv1x1(layer3) + Conv1x1(layer2), the same two
  laterals as the full SDM added on the shared stride-8 grid (stage 0 then stage 1, no Bottleneck).
- `top_down=False, lateral=False` (rows 1-2, FlowE): the SDM is the identity on layer4 and has no parameters.
The output is always at stride 8; impossible combinations are rejected at construction with a clear error:
top-down on a dilated encoder would end at stride 2, and a stride-32 encoder without top-down never reaches 8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck


def make_bottleneck(channels: int, reduction: int) -> Bottleneck:
    """torchvision Bottleneck channels -> channels/reduction -> channels/reduction -> channels, no downsample.

    torchvision computes width = planes * base_width / 64 with planes = channels / 4 (expansion 4), so
    base_width = 64 * 4 / reduction (32 for the 8x reduction: 2048 -> 256 -> 256 -> 2048).
    """
    width = channels // reduction
    if channels % 4 or channels % reduction or width < 1:
        raise ValueError(
            f"decoder channels {channels} must be divisible by 4 and by decoder_reduction {reduction}",
        )
    planes = channels // 4
    block = Bottleneck(inplanes=channels, planes=planes, base_width=64 * width // planes)
    if block.conv1.out_channels != width:  # base_width was not an integer: the widths would silently drift
        raise ValueError(f"cannot build a {channels}->{width}->{channels} Bottleneck with torchvision")
    return block


class SpatialDecoder(nn.Module):
    """SDM: top-down Bottleneck/upsample stages plus 1x1 laterals; maps encoder features to stride 8."""

    def __init__(
        self,
        channels: tuple[int, int, int],
        encoder_stride: int = 32,
        top_down: bool = True,
        lateral: bool = True,
        bottleneck_first: bool = True,
        reduction: int = 8,
    ) -> None:
        super().__init__()
        c2, c3, c4 = channels
        if encoder_stride not in (8, 32):
            raise ValueError(f"encoder output stride must be 8 (dilated) or 32, got {encoder_stride}")
        if top_down and encoder_stride != 32:
            raise ValueError(
                "decoder_top_down=True needs the non-dilated (stride-32) encoder: its two 2x upsampling "
                "stages would take a dilated stride-8 encoder to stride 2. Set model.dilated=false or "
                "model.decoder_top_down=false."
            )
        if not top_down and encoder_stride != 8:
            raise ValueError(
                "decoder_top_down=False needs the dilated (stride-8) encoder, otherwise the SDM output "
                "stays at stride 32 and layer2/3/4 do not share a grid for the laterals. "
                "Set model.dilated=true."
            )
        self.channels = c4
        self.top_down = top_down
        self.lateral = lateral
        self.bottleneck_first = bottleneck_first
        # Module lists are empty when a switch is off, so the state dict only holds what runs.
        self.blocks = nn.ModuleList([make_bottleneck(c4, reduction) for _ in range(2)] if top_down else [])
        lateral_convs = [nn.Conv2d(c, c4, kernel_size=1, bias=True) for c in (c3, c2)] if lateral else []
        self.laterals = nn.ModuleList(lateral_convs)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        z = feats["layer4"]
        skips = (feats["layer3"], feats["layer2"])
        target_size = feats["layer2"].shape[-2:]  # stride 8: the only output size the dense loss accepts
        for stage in range(2):
            if self.top_down:
                block = self.blocks[stage]
                if self.bottleneck_first:
                    z = _upsample2x(block(z))
                else:
                    z = block(_upsample2x(z))
            if self.lateral:
                skip = skips[stage]
                if skip.shape[-2:] != z.shape[-2:]:
                    raise ValueError(
                        f"SDM stage {stage}: lateral input {tuple(skip.shape[-2:])} does not match the "
                        f"decoder map {tuple(z.shape[-2:])}; input height and width must be multiples of 32"
                    )
                z = z + self.laterals[stage](skip)
        if z.shape[-2:] != target_size:
            raise ValueError(
                f"SDM output {tuple(z.shape[-2:])} is not at stride 8 {tuple(target_size)}; "
                "input height and width must be multiples of 32 for the top-down decoder"
            )
        return z


def _upsample2x(z: torch.Tensor) -> torch.Tensor:
    return F.interpolate(z, scale_factor=2.0, mode="bilinear", align_corners=False)
