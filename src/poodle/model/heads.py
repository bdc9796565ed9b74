"""Projector / predictor MLPs.

One module serves both branches: on the dense branch it runs as 1x1 convolutions over the stride-8 SDM map;
on the pooled branch it runs on (N, C) pooled vectors, where Conv1x1-BN2d-ReLU-Conv1x1 on (N, C, 1, 1) is
exactly Linear-BN1d-ReLU-Linear with BN statistics over all N subcrops in the batch.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvMLP(nn.Sequential):
    """Conv1x1(bias) -> BN2d -> ReLU -> Conv1x1(bias); no norm/activation on the output (as the release).

    ``bias=False`` drops the first conv's bias, as the release's FlowE heads do (``model.head_bias``). The BN right
    after it subtracts the batch mean, so in train mode the output does not depend on that bias.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, bias: bool = True) -> None:
        super().__init__(
            nn.Conv2d(in_dim, hidden_dim, kernel_size=1, bias=bias),
            nn.BatchNorm2d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, out_dim, kernel_size=1, bias=True),
        )
        self.in_dim = in_dim
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, out, H, W); (N, C) -> (N, out)."""
        if x.ndim == 2:
            return super().forward(x[:, :, None, None]).flatten(1)
        return super().forward(x)
