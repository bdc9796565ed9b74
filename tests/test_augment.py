"""Known-answer tests for poodle.data.augment: photometric ops, dense-branch geometry, outer crop."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TVF

from poodle.config import AugmentConfig
from poodle.data.augment import (
    _adjust_hue,
    blur_kernel_sides,
    blur_kernel_size,
    normalize,
    photometric,
    sample_dense_geometry,
)

NO_PHOTO = AugmentConfig(color_jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _smooth_image(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    coarse = torch.rand(b, 3, 5, 7, generator=_gen(seed))
    return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)


# ----------------------------------------------------------------------------------------------- photometric


def test_photometric_shape_dtype_range_and_normalisation():
    img = torch.rand(4, 3, 24, 40, generator=_gen(0))
    out = photometric(img, AugmentConfig(), _gen(1), normalize=False)
    assert out.shape == img.shape and out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    normed = photometric(img, AugmentConfig(), _gen(1), normalize=True)
    torch.testing.assert_close(normed, normalize(out))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    torch.testing.assert_close(normed, (out - mean) / std)


def test_photometric_accepts_uint8():
    img = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8, generator=_gen(0))
    out = photometric(img, NO_PHOTO, _gen(0), normalize=False)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, img.float() / 255)


def test_photometric_with_zero_probabilities_is_identity():
    img = torch.rand(3, 3, 20, 30, generator=_gen(0))
    assert torch.equal(photometric(img, NO_PHOTO, _gen(0), normalize=False), img)
    # jitter on but every strength zero: also the identity
    cfg = AugmentConfig(brightness=0, contrast=0, saturation=0, hue=0, color_jitter_p=1, grayscale_p=0, blur_p=0)
    assert torch.equal(photometric(img, cfg, _gen(0), normalize=False), img)


def test_blur_kernel_sizes_match_the_release_values():
    assert (blur_kernel_size(512, 0.1), blur_kernel_size(1024, 0.1)) == (53, 105)


def test_blur_axes_on_a_non_square_image():
    # H=40, W=200: vertical kernel 5 taps, horizontal kernel 21 taps (the release swaps them).
    h, w = 40, 200
    cfg = dataclasses.replace(NO_PHOTO, blur_p=1.0, blur_sigma=(2.0, 2.0), blur_kernel_frac=0.1)
    kh, kw = blur_kernel_size(h, 0.1), blur_kernel_size(w, 0.1)
    assert (kh, kw) == (5, 21)
    impulse = torch.zeros(1, 3, h, w)
    impulse[..., 20, 100] = 1.0
    out = photometric(impulse, cfg, _gen(0), normalize=False)[0, 0]
    rows = (out.abs() > 1e-9).any(1).nonzero().flatten()
    cols = (out.abs() > 1e-9).any(0).nonzero().flatten()
    assert (rows.min().item(), rows.max().item()) == (20 - kh // 2, 20 + kh // 2)
    assert (cols.min().item(), cols.max().item()) == (100 - kw // 2, 100 + kw // 2)
    torch.testing.assert_close(out.sum(), torch.tensor(1.0))
    # A horizontal line only spreads vertically, with the 1-D Gaussian profile of the vertical kernel.
    line = torch.zeros(1, 3, h, w)
    line[..., 20, :] = 1.0
    out = photometric(line, cfg, _gen(0), normalize=False)[0, 0]
    torch.testing.assert_close(out, out[:, :1].expand(h, w))  # constant along each row
    t = torch.arange(kh, dtype=torch.float32) - kh // 2
    g = torch.exp(-0.5 * (t / 2.0) ** 2)
    torch.testing.assert_close(out[20 - kh // 2 : 20 + kh // 2 + 1, 0], g / g.sum())
    assert out[: 20 - kh // 2].abs().max() == 0 and out[20 + kh // 2 + 1 :].abs().max() == 0


def test_fixed_blur_kernel_is_torchvision_gaussian_blur():
    # augment.blur_kernel = k: a k x k kernel on every image size, as the release's FlowE GaussianBlur(51).
    cfg = dataclasses.replace(NO_PHOTO, blur_p=1.0, blur_sigma=(1.5, 1.5), blur_kernel=7)
    assert blur_kernel_sides(512, 1024, cfg) == (7, 7)
    assert blur_kernel_sides(512, 1024, dataclasses.replace(cfg, blur_kernel=0)) == (53, 105)  # default unchanged
    assert blur_kernel_sides(512, 1024, dataclasses.replace(cfg, blur_kernel=51)) == (51, 51)
    img = torch.rand(2, 3, 20, 40, generator=_gen(3))
    out = photometric(img, cfg, _gen(0), normalize=False)
    torch.testing.assert_close(out, TVF.gaussian_blur(img, [7, 7], [1.5, 1.5]), atol=1e-5, rtol=0)
    impulse = torch.zeros(1, 3, 20, 40)
    impulse[..., 10, 20] = 1.0
    support = (photometric(impulse, cfg, _gen(0), normalize=False)[0, 0].abs() > 1e-9).nonzero()
    assert (support.min(0).values.tolist(), support.max(0).values.tolist()) == ([7, 17], [13, 23])


def test_photometric_is_deterministic_with_a_generator():
    img = torch.rand(3, 3, 20, 30, generator=_gen(0))
    a = photometric(img, AugmentConfig(), _gen(7))
    b = photometric(img, AugmentConfig(), _gen(7))
    c = photometric(img, AugmentConfig(), _gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_photometric_draws_per_image_parameters():
    img = torch.rand(1, 3, 16, 16, generator=_gen(0)).expand(8, 3, 16, 16).contiguous()
    cfg = dataclasses.replace(AugmentConfig(), color_jitter_p=1.0, grayscale_p=0.0, blur_p=0.0)
    out = photometric(img, cfg, _gen(3), normalize=False)
    flat = out.flatten(1)
    diffs = (flat[:, None] - flat[None]).abs().amax(-1)
    assert (diffs + torch.eye(8) > 1e-3).all()  # every pair of images got different jitter


def test_grayscale_and_hue_match_torchvision():
    img = torch.rand(2, 3, 12, 14, generator=_gen(0))
    cfg = dataclasses.replace(NO_PHOTO, grayscale_p=1.0)
    out = photometric(img, cfg, _gen(0), normalize=False)
    torch.testing.assert_close(out, TVF.rgb_to_grayscale(img, num_output_channels=3))
    for shift in (-0.2, 0.07, 0.2):
        ours = _adjust_hue(img, torch.full((2, 1, 1, 1), shift))
        torch.testing.assert_close(ours, TVF.adjust_hue(img, shift), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------- geometry


def test_dense_geometry_identity_when_disabled():
    cfg = AugmentConfig(affine=False, hflip_p=0.0)
    geo = sample_dense_geometry(3, (16, 24), cfg, generator=_gen(0))
    img = torch.rand(3, 3, 16, 24)
    assert geo.apply(img) is img and geo.undo(img) is img
    assert geo.valid_mask().all() and geo.valid_mask().shape == (3, 1, 16, 24)


def test_flip_only_is_an_exact_mirror():
    geo = sample_dense_geometry(2, (16, 24), AugmentConfig(affine=False, hflip_p=1.0), generator=_gen(0))
    img = torch.rand(2, 3, 16, 24, generator=_gen(1))
    assert torch.equal(geo.apply(img), img.flip(-1))
    assert torch.equal(geo.undo(geo.apply(img)), img)
    # the same through the resampling path: a 1.0x, 0-degree affine plus a flip
    cfg = AugmentConfig(affine=True, affine_scale=(1.0, 1.0), affine_degrees=0.0, hflip_p=1.0)
    geo = sample_dense_geometry(2, (16, 24), cfg, generator=_gen(0))
    torch.testing.assert_close(geo.apply(img), img.flip(-1), atol=1e-5, rtol=0)
    assert geo.valid_mask().all()


def test_identity_affine_has_full_valid_mask():
    cfg = AugmentConfig(affine=True, affine_scale=(1.0, 1.0), affine_degrees=0.0, hflip_p=0.0)
    geo = sample_dense_geometry(2, (20, 30), cfg, generator=_gen(0))
    assert geo.valid_mask().all()
    img = torch.rand(2, 3, 20, 30, generator=_gen(1))
    torch.testing.assert_close(geo.apply(img), img, atol=1e-5, rtol=0)


def test_rotation_is_a_rotation_in_pixel_space():
    h, w = 30, 80
    geo = sample_dense_geometry(16, (h, w), AugmentConfig(), generator=_gen(0))
    d = torch.diag(torch.tensor([w / 2, h / 2]))
    pix = d @ geo.affine @ torch.linalg.inv(d)  # back to pixel units
    gram = pix.transpose(1, 2) @ pix
    expected = geo.scale.view(-1, 1, 1) ** 2 * torch.eye(2)
    torch.testing.assert_close(gram, expected, atol=1e-5, rtol=1e-5)
    assert (geo.scale >= 0.9).all() and (geo.scale <= 1.1).all() and geo.degrees.abs().max() <= 10


def test_apply_then_undo_is_identity_on_the_valid_mask():
    h, w = 48, 80
    img = _smooth_image(6, h, w)
    cfg = dataclasses.replace(AugmentConfig(), affine_degrees=10.0, hflip_p=0.5)
    geo = sample_dense_geometry(6, (h, w), cfg, generator=_gen(2))
    assert geo.flip.any() and not geo.flip.all()
    back = geo.undo(geo.apply(img))
    valid = geo.valid_mask()
    assert 0.6 < valid.float().mean() < 1.0
    err = (back - img).abs() * valid
    assert err.max() < 0.03
    # outside the valid region the round trip lost content (zero padding came in)
    assert (back.sum(1, keepdim=True)[~valid] < img.sum(1, keepdim=True)[~valid] - 1e-3).float().mean() > 0.5
    # undo = undo_affine o undo_flip
    t = geo.apply(img)
    torch.testing.assert_close(geo.undo(t), geo.undo_affine(geo.undo_flip(t)), atol=1e-5, rtol=0)


def test_undo_works_on_low_resolution_maps():
    h, w, stride = 128, 256, 8
    img = _smooth_image(4, h, w, seed=3)
    geo = sample_dense_geometry(4, (h, w), AugmentConfig(), generator=_gen(4))
    low_t = F.avg_pool2d(geo.apply(img), stride)  # "features" of the transformed image
    low_back = geo.undo(low_t)
    expected = F.avg_pool2d(img, stride)
    valid = geo.valid_mask((h // stride, w // stride))
    # erode by one low-res pixel: pooled cells at the border mix in zero padding
    valid = -F.max_pool2d(-valid.float(), 3, stride=1, padding=1) > 0.5
    assert valid.float().mean() > 0.5
    err = (low_back - expected).abs() * valid
    # resampling a pooled map is not pooling a resampled image, so the match is approximate (a wrong inverse,
    # e.g. forgetting the flip or applying instead of undoing, gives mean 0.15 / max 0.9 here)
    assert err.sum() / (3 * valid.sum()) < 0.02 and err.max() < 0.1
    # the flip part commutes with bilinear upsampling
    up = F.interpolate(geo.undo_flip(low_t), size=(h, w), mode="bilinear", align_corners=False)
    up2 = geo.undo_flip(F.interpolate(low_t, size=(h, w), mode="bilinear", align_corners=False))
    torch.testing.assert_close(up, up2)
    with pytest.raises(ValueError, match="aspect"):
        geo.undo(torch.zeros(4, 1, 16, 16))
