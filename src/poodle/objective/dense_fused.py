"""The per-image dense loss of the composed path, forward and backward in closed form.

For an online map o = sample(z) read once per pixel from the stride-8 map z and a fixed (no-grad) target t, the
per-pixel term of `dense_loss_per_image`, || o/|o| - t/|t| ||^2 (`F.normalize`, so each norm is clamped at
1e-12), is

    sq = |o|^2 / r_o^2 + |t|^2 / r_t^2 - 2 (o . t) / (r_o r_t),      r = max(|x|, 1e-12),

and its gradient is  d sq / d o = a o + b t  with  b = -2 / (r_o r_t)  and  a = 2 (o . t) / (r_o^3 r_t) where
|o| > 1e-12 (else 2 / 1e-24). So the loss needs three per-pixel channel sums (|o|^2, |t|^2, o . t) instead of
normalised copies of both maps, their difference and its square, and the backward needs one full-resolution
tensor (a o + b t) pushed back through `grid_sample`. Like the checkpointed sequential path, the full-resolution
online read is not kept for backward: it is read again from z (one `grid_sample`), so the saved state is z, the
grid, the target and per-pixel scalars. The value equals the sequential formula on the same o and t up to
rounding (`tests/test_dense_resample.py`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from poodle.objective.dense_grid import sample_stride8

__all__ = ["composed_per_image_loss"]

_NORM_EPS = 1e-12  # F.normalize's default clamp of the norm


def _channel_sum(x: Tensor) -> Tensor:
    return x.sum(dim=1, keepdim=True)


class _ComposedDenseLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, online_map: Tensor, grid: Tensor, target: Tensor, mask: Tensor, eps: float) -> Tensor:
        o = sample_stride8(online_map, grid)
        oo, ot = _channel_sum(o.square()), _channel_sum(o * target)
        del o  # read again in backward: only per-pixel scalars are kept
        r_o = oo.sqrt().clamp_min(_NORM_EPS)
        tt = _channel_sum(target.square())
        inv_t = tt.sqrt().clamp_min(_NORM_EPS).reciprocal()
        tt = tt * inv_t.square()
        sq = oo / r_o.square() + tt - 2.0 * ot * inv_t / r_o
        den = mask.sum(dim=(1, 2, 3)) + eps
        ctx.save_for_backward(online_map, grid, target, mask, oo, ot, r_o, inv_t, den)
        return (sq * mask).sum(dim=(1, 2, 3)) / den

    @staticmethod
    def backward(ctx, grad: Tensor):
        online_map, grid, target, mask, oo, ot, r_o, inv_t, den = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        weight = mask * (grad / den).view(-1, 1, 1, 1)
        a = torch.where(oo.sqrt() > _NORM_EPS, 2.0 * ot * inv_t / r_o.pow(3), 2.0 / _NORM_EPS**2) * weight
        b = -2.0 * inv_t / r_o * weight
        z = online_map.detach().float()
        grad_o = torch.addcmul(a * sample_stride8(z, grid), b, target)
        # grid_sample's input gradient only (bilinear, zeros, align_corners=False as in sample_stride8)
        grad_z, _ = torch.ops.aten.grid_sampler_2d_backward(grad_o, z, grid, 0, 0, False, [True, False])
        return grad_z.to(online_map.dtype), None, None, None, None


def composed_per_image_loss(online_map: Tensor, grid: Tensor, target: Tensor, mask: Tensor, eps: float = 1e-7):
    """(B,) `dense_loss_per_image(normalize(sample(online_map, grid)), normalize(target), mask, eps)`.

    online_map (B, C, h, w) with grad; grid (B, H, W, 2) from `dense_grid.online_grid`; target (B, C, H, W) the
    target read (not normalised, no grad); mask (B, 1, H, W) float.
    """
    return _ComposedDenseLoss.apply(online_map, grid, target.detach(), mask.detach(), eps)
