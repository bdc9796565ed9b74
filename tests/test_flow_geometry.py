"""Known-answer tests for poodle.data.flow (pixel-centre convention, decision 15)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from poodle.data.flow import (
    absolute_occlusion_mask,
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


# ----------------------------------------------------------------------------------------------- release switches


def test_release_warp_convention_on_a_tiny_ramp_by_hand():
    # Zero flow, img(y, x) = x + 1 on 3 x 5. The release normalises q by (W - 1) and samples with
    # align_corners=False, which reads x at q W / (W - 1) - 0.5 = 1.25 x - 0.5 (and y at 1.5 y - 0.5):
    #   x = 0 -> -0.5: half pixel 0 (value 1), half zero padding     = 0.5
    #   x = 1 ->  0.75: 1 + 0.75 = 1.75;  x = 2 -> 2.0: 3;  x = 3 -> 3.25: 4.25
    #   x = 4 ->  4.5: half pixel 4 (value 5), half zero padding     = 2.5
    # and rows 0 and 2 (y -> -0.5, 2.5) are halved by the padding too.
    h, w = 3, 5
    img = (torch.arange(w, dtype=torch.float32) + 1).expand(1, 1, h, w).clone()
    zero = torch.zeros(1, 2, h, w)
    row = torch.tensor([0.5, 1.75, 3.0, 4.25, 2.5])
    expected = torch.stack((0.5 * row, row, 0.5 * row)).view(1, 1, h, w)
    torch.testing.assert_close(backward_warp(img, zero, convention="release"), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(backward_warp(img, zero), img, atol=1e-6, rtol=0)  # exact: identity
    with pytest.raises(ValueError, match="warp convention"):
        backward_warp(img, zero, convention="half")


def test_release_warp_is_the_exact_warp_of_a_magnified_flow():
    # Derivation: the release reads x at (x + F) W / (W - 1) - 0.5, i.e. the exact warp by
    # F' = F W / (W - 1) + x / (W - 1) - 0.5: an offset of -0.5 px at the left edge, 0 at the centre, +0.5 at the right.
    h, w = 12, 17
    img = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(6))
    flow = _smooth_flow(2, h, w, amp=2.0, seed=2)
    ys = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, w)
    fx = flow[:, 0] * w / (w - 1) + xs / (w - 1) - 0.5
    fy = flow[:, 1] * h / (h - 1) + ys / (h - 1) - 0.5
    equivalent = torch.stack((fx, fy), dim=1)
    torch.testing.assert_close(
        backward_warp(img, flow, convention="release"), backward_warp(img, equivalent), atol=1e-5, rtol=0
    )


def test_absolute_occlusion_known_answers():
    # Consistent integer translation: forward (2, 0), backward (-2, 0). Nothing is occluded, not even the two right
    # columns whose flow leaves the frame: there the zero-padded backward flow leaves an error of 2 px < 3.54.
    h, w = 8, 12
    fw = _const_flow(1, h, w, dx=2.0, dy=0.0)
    bw = _const_flow(1, h, w, dx=-2.0, dy=0.0)
    occ = absolute_occlusion_mask(fw, bw, threshold_px=3.54)
    assert occ.shape == (1, 1, h, w) and occ.dtype == torch.bool and not occ.any()
    assert occlusion_mask(fw, bw)[0, 0, :, -2:].all()  # DDFlow's relative test flags them (4 > 0.1 * 4 + 0.5)

    # Perturb the backward flow at q = p + F(p) for p = (4, 5): the error at p is the perturbation's length.
    def error_at_p(d):
        b = bw.clone()
        b[0, :, 4, 7] += torch.tensor(d)
        occ = absolute_occlusion_mask(fw, b, threshold_px=3.54)
        assert occ.sum() <= 1  # only p samples q exactly
        return bool(occ[0, 0, 4, 5])

    assert not error_at_p([0.0, 3.0])  # 3.0 px: consistent enough
    assert error_at_p([0.0, 4.0])  # 4.0 px: occluded
    assert not error_at_p([2.5, 2.5])  # 3.536 px: the Euclidean norm, just under the threshold
    assert error_at_p([2.6, 2.5])  # 3.607 px
    b = bw.clone()
    b[0, :, 4, 7] += torch.tensor([0.0, 3.0])
    assert occlusion_mask(fw, b)[0, 0, 4, 5]  # DDFlow: 9 > 0.1 * (4 + 13) + 0.5, occluded at 3 px already
