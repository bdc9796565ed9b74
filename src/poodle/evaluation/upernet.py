"""UperNet head (Xiao et al. 2018; mmseg `UPerHead`): PPM on layer4 + FPN over layer1..layer4, fused, classified.

PooDLe discards the SDM for UperNet and reads the encoder pyramid, so the backbone is the plain
stride-32 encoder and the FPN runs over layer1 (stride 4) .. layer4 (stride 32); logits come out at stride 4.
Channels are 512 at full scale (`upernet_channels`), smaller in the CPU recipes. Frozen mode trains only this
head; finetune mode also trains the backbone (lower lr multiplier, BN in train mode; SyncBN under DDP on GPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LEVELS = ("layer1", "layer2", "layer3", "layer4")


def conv_bn_relu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class UperNetHead(nn.Module):
    def __init__(
        self,
        in_channels: tuple[int, int, int, int],
        num_classes: int,
        channels: int = 512,
        pool_scales: tuple[int, ...] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        c4 = in_channels[-1]
        self.pool_scales = pool_scales
        self.ppm = nn.ModuleList(conv_bn_relu(c4, channels, 1) for _ in pool_scales)
        self.ppm_bottleneck = conv_bn_relu(c4 + len(pool_scales) * channels, channels, 3)
        self.laterals = nn.ModuleList(conv_bn_relu(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(conv_bn_relu(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = conv_bn_relu(len(in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def _ppm(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        outs = [x]
        for scale, conv in zip(self.pool_scales, self.ppm):
            pooled = conv(F.adaptive_avg_pool2d(x, scale))
            outs.append(F.interpolate(pooled, size=size, mode="bilinear", align_corners=False))
        return self.ppm_bottleneck(torch.cat(outs, dim=1))

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """layer1..layer4 -> (B, num_classes, H/4, W/4) logits."""
        xs = [feats[k] for k in LEVELS]
        lat = [conv(x) for conv, x in zip(self.laterals, xs[:-1])] + [self._ppm(xs[-1])]
        for i in range(len(lat) - 1, 0, -1):  # top-down pathway
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[-2:], mode="bilinear",
                                                    align_corners=False)  # fmt: skip
        outs = [conv(x) for conv, x in zip(self.fpn_convs, lat[:-1])] + [lat[-1]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]]
        return self.classifier(self.dropout(self.fpn_bottleneck(torch.cat(outs, dim=1))))
