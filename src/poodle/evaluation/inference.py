"""Whole-image and sliding-window inference of a segmentation model (mmseg `whole_inference` / `slide_inference`).

`model(x)` maps normalised (B, 3, h, w) images to logits at any stride; logits are upsampled bilinearly to the
input size, and for `slide` averaged over the overlapping windows (windows of `crop`, moved by `stride`, the last
one flush with the border; an image smaller than the window is padded with zeros and the padding cropped away).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from poodle.evaluation.linear import upsample_logits

Model = Callable[[torch.Tensor], torch.Tensor]


def whole_inference(model: Model, x: torch.Tensor) -> torch.Tensor:
    return upsample_logits(model(x).float(), tuple(x.shape[-2:]))


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Start offsets covering [0, size): regular steps, the last window aligned to the end."""
    n = max(size - crop + stride - 1, 0) // stride + 1
    return sorted({max(min(i * stride, size - crop), 0) for i in range(n)})


def slide_inference(model: Model, x: torch.Tensor, crop: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    b, _, h, w = x.shape
    ch, cw = crop
    pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    hp, wp = x.shape[-2:]
    total: torch.Tensor | None = None
    count = torch.zeros(1, 1, hp, wp, device=x.device)
    for top in window_starts(hp, ch, stride[0]):
        for left in window_starts(wp, cw, stride[1]):
            win = x[:, :, top : top + ch, left : left + cw]
            logits = whole_inference(model, win)
            if total is None:
                total = torch.zeros(b, logits.shape[1], hp, wp, device=x.device)
            total[:, :, top : top + ch, left : left + cw] += logits
            count[:, :, top : top + ch, left : left + cw] += 1
    assert total is not None
    return (total / count)[:, :, :h, :w]


def infer(model: Model, x: torch.Tensor, mode: str, crop: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """Logits at the input resolution (B, C, H, W)."""
    if mode == "whole":
        return whole_inference(model, x)
    if mode == "slide":
        return slide_inference(model, x, crop, stride)
    raise ValueError(f"inference must be whole or slide, got {mode!r}")
