"""Linear readout head (FlowE's protocol, as in the paper): one conv classifier on a frozen stride-8 feature map.

Default: BatchNorm (batch statistics while training, running statistics at eval) then a 1x1 conv, as mmseg's
`BNHead` / `FCNHead(num_convs=0)` used by DINO/iBOT linear segmentation. At inference the BN is a fixed per-channel
affine map that folds into the conv, so the classifier is still exactly linear in the features; it only
conditions SGD on unnormalised features (the SDM output has no norm). `bn=False` gives the bare conv.
`kernel=3` is the DeepLab-v1 style 3x3 dilated conv.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LinearHead(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, kernel: int = 1, dilation: int = 6, bn: bool = True) -> None:
        super().__init__()
        if kernel not in (1, 3):
            raise ValueError(f"kernel must be 1 or 3, got {kernel}")
        self.bn = nn.BatchNorm2d(in_channels) if bn else nn.Identity()
        d = dilation if kernel == 3 else 1
        self.conv = nn.Conv2d(in_channels, num_classes, kernel, padding=d * (kernel // 2), dilation=d)
        nn.init.normal_(self.conv.weight, std=0.01)  # mmseg's conv_seg init
        nn.init.zeros_(self.conv.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) features -> (B, num_classes, h, w) logits at the feature stride."""
        return self.conv(self.bn(features))


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of logits to the label size (align_corners=False, as mmseg's `resize`)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
