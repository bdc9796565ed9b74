"""The trainable flow network: torchvision RAFT returning every update's flow for both directions of each pair."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from poodle.data.optical_flow import _load_raft_state_dict, _resolve_raft_weights, raft_flow_sequence


class UnsupervisedRaft(nn.Module):
    """torchvision ``raft_small`` / ``raft_large`` in training mode.

    ``forward(frames_a, frames_b, iters)`` takes float frames in [0, 1] (B, 3, H, W) and returns the list of `iters`
    flows (2B, 2, H, W): the first B are a->b, the last B are b->a. Each frame is encoded once for both directions.
    ``self.raft.state_dict()`` is a plain torchvision RAFT state dict, what ``flow.weights`` loads.
    """

    def __init__(self, size: str = "small", init: str = "") -> None:
        super().__init__()
        from torchvision.models.optical_flow import raft_large, raft_small

        self.size = size
        self.raft = (raft_large if size == "large" else raft_small)(weights=None, progress=False)
        if init:  # a torchvision state dict to start from (e.g. a previous label-free run)
            _load_raft_state_dict(self.raft, _resolve_raft_weights(size, init))

    def forward(self, frames_a: Tensor, frames_b: Tensor, iters: int) -> list[Tensor]:
        x = torch.cat((frames_a, frames_b)) * 2.0 - 1.0  # RAFT expects [-1, 1]
        return raft_flow_sequence(self.raft, x, iters)
