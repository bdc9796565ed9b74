"""Batched augmentations that run on the device holding the images.

* :func:`photometric` - per-image colour jitter, grayscale and Gaussian blur, then ImageNet normalisation.
* :class:`DenseGeometry` / :func:`sample_dense_geometry` - the invertible affine + horizontal flip of the dense
  branch, with ``apply`` / ``undo`` / ``valid_mask``.

The global (outer) crop shared by both frames of a pair is host-side work of the video loaders:
:mod:`poodle.data.outer_crop`.

Every random draw goes through an optional ``torch.Generator``. Draws are made on the generator's device and
moved to the data's device: pass a generator living on the data's device (or none) inside a training step, since
a CPU generator with CUDA data costs a small blocking host-to-device copy per draw. Nothing here reads a device
value back to the host.

Geometry uses the pixel-centre convention of :mod:`poodle.data.flow` (``align_corners=False`` everywhere).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from poodle.config import AugmentConfig

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DenseGeometry",
    "blur_kernel_size",
    "blur_kernel_sides",
    "denormalize",
    "normalize",
    "photometric",
    "rand",
    "sample_dense_geometry",
    "to_float_image",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale.
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


# ----------------------------------------------------------------------------------------------- randomness


def rand(shape: tuple[int, ...], device: torch.device | str | None, generator: torch.Generator | None = None) -> Tensor:
    """U[0, 1) float32 of ``shape`` on ``device``, drawn from ``generator`` (on its own device) when given."""
    if generator is None:
        return torch.rand(shape, device=device)
    out = torch.rand(shape, generator=generator, device=generator.device)
    return out.to(device)


def _uniform(shape: tuple[int, ...], lo: float, hi: float, device, generator) -> Tensor:
    return lo + (hi - lo) * rand(shape, device, generator)


# ----------------------------------------------------------------------------------------------- photometric


def to_float_image(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 [0, 1]; floating tensors are returned as float32 unchanged in value."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
    return images.float()


def normalize(images: Tensor) -> Tensor:
    """ImageNet normalisation of (..., 3, H, W) images in [0, 1]."""
    return _imagenet_normalize(images)


_CONSTANTS: dict[tuple, Tensor] = {}


def _constant(values: tuple[float, ...], like: Tensor) -> Tensor:
    """(len(values), 1, 1) constant on ``like``'s device, cached: torch.tensor(list, device=cuda) would be a
    blocking host-to-device copy (a stream sync) on every call. Only plain tensors are cached: a FakeTensor (the
    memory model, tracing) must not leak into later real calls."""
    if type(like) is not torch.Tensor:
        return torch.tensor(values, dtype=like.dtype).view(-1, 1, 1).to(like.device)
    key = (values, like.device, like.dtype)
    out = _CONSTANTS.get(key)
    if out is None:
        out = _CONSTANTS[key] = torch.tensor(values, dtype=like.dtype).view(-1, 1, 1).to(like.device)
    return out


def _imagenet_normalize(images: Tensor) -> Tensor:
    return (images - _constant(IMAGENET_MEAN, images)) / _constant(IMAGENET_STD, images)


def denormalize(images: Tensor) -> Tensor:
    """Inverse of :func:`normalize` (for visualisation)."""
    return images * _constant(IMAGENET_STD, images) + _constant(IMAGENET_MEAN, images)


def _gray(x: Tensor) -> Tensor:
    r, g, b = x.unbind(1)
    return (_GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _rgb_to_hsv(x: Tensor) -> Tensor:
    # Same formulas as torchvision's tensor adjust_hue, batched.
    r, g, b = x.unbind(1)
    maxc = x.amax(1)
    minc = x.amin(1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    crd = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=1)


def _hsv_to_rgb(hsv: Tensor) -> Tensor:
    # Closed form: c_n = v - v s clamp(min(k, 4 - k), 0, 1), k = (n + 6 h) mod 6, n = 5, 3, 1 for R, G, B.
    h, s, v = hsv[:, 0:1], hsv[:, 1:2], hsv[:, 2:3]
    n = _constant((5.0, 3.0, 1.0), hsv)
    k = torch.remainder(n + 6.0 * h, 6.0)
    return v - v * s * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


def _adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    hsv = _rgb_to_hsv(x)
    h = torch.remainder(hsv[:, 0:1] + shift, 1.0)
    return _hsv_to_rgb(torch.cat((h, hsv[:, 1:]), dim=1)).clamp(0.0, 1.0)


def _color_jitter(x: Tensor, cfg: AugmentConfig, generator, random_order: bool) -> Tensor:
    b, dev = x.shape[0], x.device
    shape = (b, 1, 1, 1)
    apply = rand((b,), dev, generator) < cfg.color_jitter_p
    # torchvision ColorJitter ranges: factor ~ U[max(0, 1 - s), 1 + s]; hue shift ~ U[-hue, hue].
    fb = _uniform(shape, max(0.0, 1 - cfg.brightness), 1 + cfg.brightness, dev, generator)
    fc = _uniform(shape, max(0.0, 1 - cfg.contrast), 1 + cfg.contrast, dev, generator)
    fs = _uniform(shape, max(0.0, 1 - cfg.saturation), 1 + cfg.saturation, dev, generator)
    fh = _uniform(shape, -cfg.hue, cfg.hue, dev, generator)

    # torchvision's adjust_* semantics: blend with black / the mean gray level / the gray image, clamp to [0, 1].
    def brightness(y: Tensor) -> Tensor:
        return (y * fb).clamp(0.0, 1.0)

    def contrast(y: Tensor) -> Tensor:
        return (fc * y + (1 - fc) * _gray(y).mean((1, 2, 3), keepdim=True)).clamp(0.0, 1.0)

    def saturation(y: Tensor) -> Tensor:
        return (fs * y + (1 - fs) * _gray(y)).clamp(0.0, 1.0)

    def hue(y: Tensor) -> Tensor:
        return _adjust_hue(y, fh)

    ops = {
        0: (cfg.brightness > 0, brightness),
        1: (cfg.contrast > 0, contrast),
        2: (cfg.saturation > 0, saturation),
        3: (cfg.hue > 0, hue),
    }
    if random_order:
        # One permutation of the four ops per image (torchvision draws one per call = per image).
        order = rand((b, 4), dev, generator).argsort(dim=1)
    else:
        order = torch.arange(4, device=dev).expand(b, 4)
    y = x
    for step in range(4):
        op_here = order[:, step].view(shape)
        out = y
        for idx, (enabled, fn) in ops.items():
            if enabled:  # host-side config: a disabled op is the identity and costs nothing
                out = torch.where(op_here == idx, fn(y), out)
        y = out
    # Exact identity for images that were not jittered (the hue round trip is only ~1e-7 exact).
    return torch.where(apply.view(shape), y, x)


def blur_kernel_size(side: int, frac: float) -> int:
    """Odd kernel side 2 ceil(frac side / 2) + 1: the release's (53, 105) at 512 x 1024 for frac = 0.1."""
    k = 2 * math.ceil(frac * side / 2) + 1
    return max(1, min(k, 2 * side - 1))  # reflect padding needs k // 2 < side


def blur_kernel_sides(h: int, w: int, cfg: AugmentConfig) -> tuple[int, int]:
    """(vertical, horizontal) kernel sides for an h x w image: ~``blur_kernel_frac`` of each side, or the fixed odd
    ``blur_kernel`` on both axes (the release's FlowE: torchvision ``GaussianBlur(51)``), capped like
    :func:`blur_kernel_size` so reflect padding stays valid on tiny images."""
    if cfg.blur_kernel > 0:
        return min(cfg.blur_kernel, 2 * h - 1), min(cfg.blur_kernel, 2 * w - 1)
    return blur_kernel_size(h, cfg.blur_kernel_frac), blur_kernel_size(w, cfg.blur_kernel_frac)


def _gaussian_kernels(size: int, sigma: Tensor) -> Tensor:
    t = torch.arange(size, device=sigma.device, dtype=torch.float32) - (size - 1) / 2
    k = torch.exp(-0.5 * (t.view(1, -1) / sigma.view(-1, 1)).square())
    return k / k.sum(dim=1, keepdim=True)  # (B, size)


def _gaussian_blur(x: Tensor, sigma: Tensor, kh: int, kw: int) -> Tensor:
    """Separable blur with a per-image sigma: kh taps along H (vertical), kw taps along W (horizontal)."""
    b, c, h, w = x.shape
    y = x.reshape(1, b * c, h, w)  # grouped conv: one group per (image, channel)

    def per_channel(k: Tensor) -> Tensor:  # (B, n) -> (B * C, n); expand, not repeat_interleave (may sync)
        return k.unsqueeze(1).expand(b, c, k.shape[1]).reshape(b * c, k.shape[1])

    if kh > 1:
        wv = per_channel(_gaussian_kernels(kh, sigma)).view(b * c, 1, kh, 1)
        y = F.conv2d(F.pad(y, (0, 0, kh // 2, kh // 2), mode="reflect"), wv.to(y.dtype), groups=b * c)
    if kw > 1:
        wh = per_channel(_gaussian_kernels(kw, sigma)).view(b * c, 1, 1, kw)
        y = F.conv2d(F.pad(y, (kw // 2, kw // 2, 0, 0), mode="reflect"), wh.to(y.dtype), groups=b * c)
    return y.view(b, c, h, w)


def photometric(
    images: Tensor,
    cfg: AugmentConfig,
    generator: torch.Generator | None = None,
    normalize: bool = True,
    random_order: bool = True,
) -> Tensor:
    """Per-image colour jitter (p), grayscale (p), Gaussian blur (p), then optional ImageNet normalisation.

    ``images``: (B, 3, H, W) float in [0, 1] or uint8. Returns float32. Every image draws its own parameters;
    with ``random_order`` (default, as torchvision's ColorJitter) each image also applies brightness /
    contrast / saturation / hue in its own random order, which evaluates each enabled op once per position
    (4x the cheap jitter arithmetic) to stay free of data-dependent indexing. Blur kernel sides are
    ``blur_kernel_size(H)`` vertically and ``blur_kernel_size(W)`` horizontally (the release swapped them), or
    ``cfg.blur_kernel`` on both axes when it is set (:func:`blur_kernel_sides`).
    """
    x = to_float_image(images)
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(x.shape)}")
    b, _, h, w = x.shape
    dev = x.device
    shape = (b, 1, 1, 1)
    if cfg.color_jitter_p > 0 and max(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue) > 0:
        x = _color_jitter(x, cfg, generator, random_order)
    if cfg.grayscale_p > 0:
        gray = rand((b,), dev, generator) < cfg.grayscale_p
        x = torch.where(gray.view(shape), _gray(x).expand_as(x), x)
    if cfg.blur_p > 0:
        do_blur = rand((b,), dev, generator) < cfg.blur_p
        sigma = _uniform((b,), cfg.blur_sigma[0], cfg.blur_sigma[1], dev, generator).clamp_min(1e-6)
        kh, kw = blur_kernel_sides(h, w, cfg)
        x = torch.where(do_blur.view(shape), _gaussian_blur(x, sigma, kh, kw), x)
    if normalize:
        x = _imagenet_normalize(x)
    return x


# ----------------------------------------------------------------------------------------------- dense geometry


def _inverse_2x2(m: Tensor) -> Tensor:
    # Closed form: torch.linalg.inv checks for singularity, which reads a flag back from the device.
    a, b, c, d = m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1]
    adj = torch.stack((torch.stack((d, -b), -1), torch.stack((-c, a), -1)), -2)
    return adj / (a * d - b * c)[..., None, None]


@dataclass
class DenseGeometry:
    """Per-image invertible transform T = hflip o (scale s, rotation a about the image centre).

    ``affine`` is the (B, 2, 2) linear part in ``grid_sample``'s normalised coordinates (original frame ->
    transformed frame); ``flip`` (B,) bool. Because the transform has no translation and is centred, the same
    normalised matrix describes it at every resolution of the same aspect ratio, so ``undo`` works on full-res
    maps and on low-res feature maps alike.

    ``apply(x)(q) = x(T^-1 q)`` (zero padding); ``undo(m)(p) = m(T p)``; ``undo = undo_affine o undo_flip`` and
    ``undo_flip`` commutes with bilinear upsampling (align_corners=False), so the flip may be undone on the
    low-res map and the affine after upsampling.
    """

    affine: Tensor  # (B, 2, 2) float32, normalised coordinates
    flip: Tensor  # (B,) bool
    size: tuple[int, int]  # (H, W) of the frames it was sampled for
    use_affine: bool  # False: affine is the identity and no resampling happens (host-side flag from config)
    use_flip: bool  # False: no image is flipped
    scale: Tensor | None = None  # (B,) sampled scale, for inspection
    degrees: Tensor | None = None  # (B,) sampled rotation, for inspection

    @property
    def batch(self) -> int:
        return self.flip.shape[0]

    def rows(self, index: slice) -> DenseGeometry:
        """The transforms of a slice of the batch (the dense loss is computed in chunks of images)."""
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return DenseGeometry(self.affine[index], self.flip[index], self.size, self.use_affine, self.use_flip,
                             pick(self.scale), pick(self.degrees))  # fmt: skip

    def _check(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[0] != self.batch:
            raise ValueError(f"expected (B={self.batch}, C, H, W), got {tuple(x.shape)}")
        hh, ww = self.size
        h, w = x.shape[-2:]
        if abs(h - w * hh / ww) > 1.0:  # allow the rounding of a strided feature map
            raise ValueError(f"map of size {(h, w)} does not have the aspect ratio of the frames {self.size}")

    def _flip_matrix(self) -> Tensor:
        f = torch.where(self.flip, -1.0, 1.0).to(self.affine.dtype)
        return torch.diag_embed(torch.stack((f, torch.ones_like(f)), dim=-1))

    def _sample(self, x: Tensor, linear: Tensor) -> Tensor:
        theta = torch.cat((linear, linear.new_zeros(linear.shape[0], 2, 1)), dim=2)
        xf = x.float()
        grid = F.affine_grid(theta, list(xf.shape), align_corners=False)
        out = F.grid_sample(xf, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if x.is_floating_point():
            return out.to(x.dtype)
        return out.round().clamp(0, 255).to(x.dtype)

    def _flip(self, x: Tensor) -> Tensor:
        return torch.where(self.flip.view(-1, 1, 1, 1), x.flip(-1), x)

    def apply(self, images: Tensor) -> Tensor:
        """Transform the input frames (B, C, H, W); pixels from outside the frame are zero."""
        self._check(images)
        if self.use_affine:
            # theta maps output to input coordinates: T^-1 = A^-1 Flip^-1 (one resampling for both).
            return self._sample(images, _inverse_2x2(self.affine) @ self._flip_matrix())
        return self._flip(images) if self.use_flip else images

    def undo_flip(self, maps: Tensor) -> Tensor:
        """Mirror back the flipped images' maps (exact, any resolution)."""
        self._check(maps)
        return self._flip(maps) if self.use_flip else maps

    def undo_affine(self, maps: Tensor) -> Tensor:
        """Undo the scale/rotation of maps whose flip was already undone (any resolution, same aspect)."""
        self._check(maps)
        return self._sample(maps, self.affine) if self.use_affine else maps

    def undo(self, maps: Tensor) -> Tensor:
        """Map a transformed-frame map back to the original frame: out(p) = m(T p), zero outside."""
        self._check(maps)
        if self.use_affine:
            return self._sample(maps, self._flip_matrix() @ self.affine)
        return self.undo_flip(maps)

    def valid_mask(self, size: tuple[int, int] | None = None) -> Tensor:
        """(B, 1, H, W) bool: original-frame pixels that survive apply + undo (as the release: a ones-image
        pushed through both, kept where it is still 1 within 1e-3)."""
        h, w = size if size is not None else self.size
        dev = self.flip.device
        if not self.use_affine:
            return torch.ones(self.batch, 1, h, w, dtype=torch.bool, device=dev)
        ones = torch.ones(self.batch, 1, h, w, device=dev)
        return (self.undo(self.apply(ones)) - 1.0).abs() < 1e-3


def sample_dense_geometry(
    batch: int,
    size: tuple[int, int],
    cfg: AugmentConfig,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> DenseGeometry:
    """Draw per image scale ~ U[cfg.affine_scale], rotation ~ U[-deg, deg] (if cfg.affine) and a horizontal flip
    with p = cfg.hflip_p; identity (no resampling at all) when cfg.affine is False and hflip_p == 0."""
    h, w = int(size[0]), int(size[1])
    if cfg.affine:
        scale = _uniform((batch,), cfg.affine_scale[0], cfg.affine_scale[1], device, generator)
        degrees = _uniform((batch,), -cfg.affine_degrees, cfg.affine_degrees, device, generator)
        rad = torch.deg2rad(degrees)
        c, s = torch.cos(rad), torch.sin(rad)
        # Pixel-space s R(a) about the centre, in normalised coordinates: D^-1 s R D with D = diag(W/2, H/2).
        affine = scale.view(-1, 1, 1) * torch.stack(
            (torch.stack((c, -s * h / w), -1), torch.stack((s * w / h, c), -1)), dim=-2
        )
    else:
        scale = degrees = None
        affine = torch.eye(2, device=device).expand(batch, 2, 2).clone()
    if cfg.hflip_p > 0:
        flip = rand((batch,), device, generator) < cfg.hflip_p
    else:
        flip = torch.zeros(batch, dtype=torch.bool, device=device)
    return DenseGeometry(
        affine=affine,
        flip=flip,
        size=(h, w),
        use_affine=cfg.affine,
        use_flip=cfg.hflip_p > 0,
        scale=scale,
        degrees=degrees,
    )
