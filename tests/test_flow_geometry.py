"""Known-answer tests for poodle.data.flow (pixel-centre convention, decision 15)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from poodle.data.flow import (
    backward_warp,
    crop_flow,
    flow_to_rgb,
    hflip_flow,
    in_bounds_mask,
    occlusion_mask,
    resize_flow,
)


def _const_flow(b: int, h: int, w: int, dx: float, dy: float) -> torch.Tensor:
    flow = torch.zeros(b, 2, h, w)
    flow[:, 0] = dx
    flow[:, 1] = dy
    return flow


def _smooth_flow(b: int, h: int, w: int, amp: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(b, 2, 3, 4, generator=g)
    return amp * torch.tanh(F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False))


def test_integer_translation_is_an_exact_shift():
    img = torch.rand(2, 3, 20, 30, generator=torch.Generator().manual_seed(1))
    out = backward_warp(img, _const_flow(2, 20, 30, dx=3.0, dy=-2.0))
    # out(y, x) = img(y - 2, x + 3)
    torch.testing.assert_close(out[:, :, 2:, :-3], img[:, :, :-2, 3:], atol=1e-5, rtol=0)
    # what comes from outside the frame is zero (zero padding)
    assert out[:, :, :2].abs().max() < 1e-6
    assert out[:, :, :, -3:].abs().max() < 1e-6


def test_zero_flow_is_identity():
    img = torch.rand(1, 5, 7, 11, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(backward_warp(img, torch.zeros(1, 2, 7, 11)), img, atol=1e-5, rtol=0)


def test_half_pixel_flow_samples_between_centres():
    # A horizontal ramp img(x) = x: warping by dx = 0.5 must give x + 0.5 exactly. The release's (W-1)
    # normalisation with align_corners=False is off here by up to half a pixel (0 at the left edge, 0.5 right).
    h, w = 4, 16
    ramp = torch.arange(w, dtype=torch.float32).expand(1, 1, h, w).clone()
    out = backward_warp(ramp, _const_flow(1, h, w, dx=0.5, dy=0.0))
    expected = ramp[..., :-1] + 0.5
    torch.testing.assert_close(out[..., :-1], expected, atol=1e-4, rtol=0)
    # The release's normalisation, to show the test would catch it.
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    ys = torch.arange(h, dtype=torch.float32)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack((2 * gx / (w - 1) - 1, 2 * gy / (h - 1) - 1), dim=-1).unsqueeze(0)
    buggy = F.grid_sample(ramp, grid, align_corners=False)
    assert (buggy[..., :-1] - expected).abs().max() > 0.4


def test_warp_keeps_dtype_and_rejects_other_resolutions():
    img = torch.rand(1, 3, 8, 8).to(torch.bfloat16)
    assert backward_warp(img, torch.zeros(1, 2, 8, 8)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="resize"):
        backward_warp(torch.rand(1, 3, 16, 16), torch.zeros(1, 2, 8, 8))


def test_resize_flow_commutes_with_warp():
    img = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(3))
    flow = _const_flow(1, 32, 48, dx=4.0, dy=-2.0)
    small = resize_flow(flow, (16, 24))
    torch.testing.assert_close(small[:, 0], torch.full((1, 16, 24), 2.0))
    torch.testing.assert_close(small[:, 1], torch.full((1, 16, 24), -1.0))
    down = F.avg_pool2d  # exact 2x bilinear downsampling under align_corners=False
    a = backward_warp(down(img, 2), small)
    b = down(backward_warp(img, flow), 2)
    torch.testing.assert_close(a[..., 1:, :-2], b[..., 1:, :-2], atol=1e-5, rtol=0)
    # anisotropic resize scales each component by its own ratio
    other = resize_flow(flow, (64, 24))
    torch.testing.assert_close(other[:, 0].mean(), torch.tensor(2.0))
    torch.testing.assert_close(other[:, 1].mean(), torch.tensor(-4.0))


def test_crop_flow_commutes_with_warp():
    img = torch.rand(1, 3, 40, 50, generator=torch.Generator().manual_seed(4))
    flow = _smooth_flow(1, 40, 50, amp=2.0)
    top, left, h, w = 7, 11, 20, 25
    a = backward_warp(img[:, :, top : top + h, left : left + w], crop_flow(flow, top, left, h, w))
    b = backward_warp(img, flow)[:, :, top : top + h, left : left + w]
    m = 3  # |flow| <= 2: away from the crop border both sample the same pixels
    torch.testing.assert_close(a[..., m:-m, m:-m], b[..., m:-m, m:-m], atol=1e-5, rtol=0)


def test_hflip_flow_commutes_with_warp():
    img = torch.rand(2, 3, 24, 31, generator=torch.Generator().manual_seed(5))
    flow = _smooth_flow(2, 24, 31, amp=3.0, seed=1)
    a = backward_warp(img.flip(-1), hflip_flow(flow))
    b = backward_warp(img, flow).flip(-1)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(hflip_flow(hflip_flow(flow)), flow)


def test_in_bounds_mask_for_translation():
    mask = in_bounds_mask(_const_flow(1, 10, 12, dx=3.0, dy=-2.0))
    expected = torch.zeros(1, 1, 10, 12, dtype=torch.bool)
    expected[..., 2:, : 12 - 3] = True
    assert mask.dtype == torch.bool and torch.equal(mask, expected)


def test_occlusion_of_a_moving_square():
    # Static background, a 6x6 square moving by (dx, dy) = (3, 2) from frame t to t+1. Forward flow is d on
    # the square at t, 0 elsewhere; backward flow is -d on the square at t+1, 0 elsewhere. With integer motion
    # bilinear sampling is exact, so the mask has no boundary slack: a pixel of frame t is occluded exactly
    # when it is background at t and covered by the square at t+1.
    h, w, (y0, x0), s, (dx, dy) = 20, 24, (5, 4), 6, (3, 2)
    sq_t = torch.zeros(h, w, dtype=torch.bool)
    sq_t[y0 : y0 + s, x0 : x0 + s] = True
    sq_t1 = torch.zeros(h, w, dtype=torch.bool)
    sq_t1[y0 + dy : y0 + dy + s, x0 + dx : x0 + dx + s] = True
    fw = torch.zeros(1, 2, h, w)
    fw[0, 0][sq_t], fw[0, 1][sq_t] = dx, dy
    bw = torch.zeros(1, 2, h, w)
    bw[0, 0][sq_t1], bw[0, 1][sq_t1] = -dx, -dy
    occ = occlusion_mask(fw, bw, alpha1=0.1, alpha2=0.5)
    assert occ.shape == (1, 1, h, w) and occ.dtype == torch.bool
    assert torch.equal(occ[0, 0], sq_t1 & ~sq_t)
    # the same scene seen backwards: disoccluded background of t+1 is occluded in the t+1 -> t direction
    assert torch.equal(occlusion_mask(bw, fw)[0, 0], sq_t & ~sq_t1)
    # consistent flows are never occluded
    assert not occlusion_mask(fw * 0, bw * 0).any()


def test_flow_to_rgb():
    rgb = flow_to_rgb(_smooth_flow(2, 8, 9, amp=3.0))
    assert rgb.shape == (2, 3, 8, 9) and rgb.dtype == torch.uint8
