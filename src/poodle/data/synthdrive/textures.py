"""Procedural, tileable grey-level textures (one atlas per sequence) and their bilinear sampler.

Every surface colour is `base colour x texture(surface-local coordinates)`. Because the texture is indexed by
coordinates attached to the surface, it moves with the surface and optical flow is observable. Textures are
periodic (built in the Fourier domain or from periodic patterns) so wrapping the coordinates is seamless, and
smooth enough that bilinear resampling of a rendered frame reproduces it.
"""

from __future__ import annotations

import functools

import numpy as np

TILE_SIZE = 64  # texels per tile side; a power of two so wrapping is a bit mask

# Tile names in atlas order. Several variants of a family give intra-class variation.
TILE_NAMES: tuple[str, ...] = (
    "flat",
    "asphalt",
    "paving",
    "grass",
    "facade_grid",
    "facade_bands",
    "facade_shop",
    "concrete",
    "fence",
    "foliage",
    "paint",
    "glass",
    "fabric",
    "metal",
    "lamp",
    "sign",
    "clouds",
    "bus",
    "train",
    "skin",
)
TILE = {name: i for i, name in enumerate(TILE_NAMES)}


def _noise(rng: np.random.Generator, sigma: float, n: int = TILE_SIZE) -> np.ndarray:
    """Periodic Gaussian-filtered white noise, zero mean and unit std (sigma in texels)."""
    white = rng.standard_normal((n, n))
    k = np.fft.fftfreq(n)
    gauss = np.exp(-2.0 * np.pi**2 * sigma**2 * (k[:, None] ** 2 + k[None, :] ** 2))
    out = np.real(np.fft.ifft2(np.fft.fft2(white) * gauss))
    return (out - out.mean()) / (out.std() + 1e-8)


def _soft_box(coord: np.ndarray, lo: float, hi: float, soft: float = 1.0) -> np.ndarray:
    """1 inside [lo, hi], 0 outside, with a linear ramp of `soft` texels (limits aliasing)."""
    return np.clip(np.minimum(coord - lo, hi - coord) / soft + 0.5, 0.0, 1.0)


def make_atlas(rng: np.random.Generator) -> np.ndarray:
    """Build the (n_tiles, T, T) float32 atlas of multiplicative grey levels (about 0.2 .. 1.3).

    Row index = surface 'v' (up for vertical faces), column = surface 'u'.
    """
    n = TILE_SIZE
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    tiles: dict[str, np.ndarray] = {}
    tiles["flat"] = np.ones((n, n))
    tiles["asphalt"] = 0.9 + 0.07 * _noise(rng, 1.0) + 0.06 * _noise(rng, 5.0)
    slab = np.minimum(xx % 16, yy % 16)
    tiles["paving"] = 0.95 + 0.05 * _noise(rng, 1.0) + 0.08 * _noise(rng, 6.0) - 0.25 * _soft_box(slab, -2, 1.0)
    tiles["grass"] = 0.85 + 0.12 * _noise(rng, 1.5) + 0.12 * _noise(rng, 5.0)
    # Facades: one tile = 4 x 4 window cells (the scale makes a cell about 3 m).
    cx, cy = xx % 16, yy % 16
    window = _soft_box(cx, 4, 12) * _soft_box(cy, 5, 13)
    tiles["facade_grid"] = 1.0 + 0.05 * _noise(rng, 2.0) - 0.6 * window
    band = _soft_box(cy, 6, 12)
    tiles["facade_bands"] = 1.0 + 0.06 * _noise(rng, 3.0) - 0.5 * band * (0.8 + 0.2 * np.cos(xx * np.pi / 8))
    shop = _soft_box(yy, 2, 22) * _soft_box(xx % 32, 3, 29)
    tiles["facade_shop"] = 1.0 + 0.05 * _noise(rng, 2.0) - 0.55 * shop - 0.4 * _soft_box(cx, 5, 11) * (yy > 30)
    block = np.minimum((xx + 16 * ((yy // 16) % 2)) % 32, yy % 16)
    tiles["concrete"] = 0.95 + 0.06 * _noise(rng, 1.0) + 0.08 * _noise(rng, 8.0) - 0.2 * _soft_box(block, -2, 1.0)
    slat = _soft_box(xx % 8, 1, 6)
    rail = _soft_box(yy % 32, 26, 30)
    tiles["fence"] = 0.45 + 0.6 * np.maximum(slat, rail) + 0.04 * _noise(rng, 1.0)
    tiles["foliage"] = 0.8 + 0.22 * _noise(rng, 1.5) + 0.25 * _noise(rng, 4.0)
    # Vehicle paint: one tile = 2 m; a dark band at the bottom (bumper/wheels) and a panel line.
    tiles["paint"] = 1.0 + 0.03 * _noise(rng, 4.0) - 0.6 * _soft_box(yy, -4, 9) - 0.15 * _soft_box(xx % 32, 15, 17)
    tiles["glass"] = 0.35 + 0.1 * np.cos(2 * np.pi * (xx + yy) / 64) + 0.05 * _noise(rng, 3.0)
    tiles["fabric"] = 1.0 + 0.08 * _noise(rng, 1.0) + 0.06 * _noise(rng, 4.0)
    tiles["metal"] = 1.0 + 0.08 * np.cos(2 * np.pi * xx / 32) + 0.04 * _noise(rng, 1.5)
    # Traffic light: dark housing with three lamps stacked vertically (tile = 1 m).
    lamp = np.zeros((n, n))
    for centre in (12, 32, 52):
        lamp = np.maximum(lamp, np.clip(7.5 - np.hypot(((xx % 32) - 16), yy - centre), 0, 1))
    tiles["lamp"] = 0.25 + 0.95 * lamp
    ring = np.hypot(xx - 31.5, yy - 31.5)
    tiles["sign"] = 1.0 - 0.45 * _soft_box(ring, 24, 29) + 0.03 * _noise(rng, 2.0)
    tiles["clouds"] = np.clip(_noise(rng, 5.0) * 0.7 + _noise(rng, 2.0) * 0.25, -0.5, 2.0)
    bus_windows = _soft_box(yy, 30, 52) * _soft_box(xx % 32, 3, 29)
    tiles["bus"] = 1.0 + 0.03 * _noise(rng, 3.0) - 0.65 * bus_windows - 0.6 * _soft_box(yy, -4, 7)
    train_windows = _soft_box(yy, 26, 42) * _soft_box(xx % 16, 3, 13)
    tiles["train"] = 1.0 + 0.03 * _noise(rng, 3.0) - 0.6 * train_windows - 0.3 * _soft_box(yy, 14, 18)
    tiles["skin"] = 1.0 + 0.04 * _noise(rng, 2.0)
    atlas = np.stack([tiles[name] for name in TILE_NAMES]).astype(np.float32)
    return np.clip(atlas, 0.05, 2.0)


MIP_LEVELS = 7  # level l is the atlas blurred with sigma 0.6 * 2**l texels (level 0: unfiltered)


def _blur(tiles: np.ndarray, sigma: float) -> np.ndarray:
    k = np.fft.fftfreq(tiles.shape[-1])
    gauss = np.exp(-2.0 * np.pi**2 * sigma**2 * (k[:, None] ** 2 + k[None, :] ** 2))
    return np.real(np.fft.ifft2(np.fft.fft2(tiles) * gauss))


@functools.cache
def shared_atlas() -> np.ndarray:
    """The (MIP_LEVELS, n_tiles, T, T) pre-filtered atlas every scene uses (fixed seed: building it costs more
    than rendering a frame). Variation between objects comes from their colours, texture scales and offsets.

    Pre-filtering matters for exact flow: a point-sampled texture whose texels are smaller than a pixel aliases,
    and aliasing does not move with the surface, so warping with the true flow would not reproduce the frame.
    """
    atlas = make_atlas(np.random.default_rng(20250424))
    levels = [atlas] + [_blur(atlas, 0.6 * 2**level) for level in range(1, MIP_LEVELS)]
    mips = np.stack(levels).astype(np.float32)
    mips.flags.writeable = False
    return mips


def sample_filtered(mips_flat: np.ndarray, tile: np.ndarray, u, v, texels_per_pixel) -> np.ndarray:
    """Trilinear lookup: bilinear in the two mip levels around log2(texels per pixel), blended."""
    n_tiles = len(TILE_NAMES)
    lod = np.clip(np.log2(np.maximum(texels_per_pixel, np.float32(1.0))), 0.0, MIP_LEVELS - 1.001)
    level = lod.astype(np.int32)
    frac = lod - level
    base = tile + level * n_tiles
    a = sample(mips_flat, base, u, v)
    b = sample(mips_flat, base + n_tiles, u, v)
    return a + (b - a) * frac


def sample(atlas_flat: np.ndarray, tile: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear, wrapping lookup of `atlas_flat` (the raveled atlas) at texel coordinates (u, v) of `tile`.

    Texel (i, j) is sampled exactly at integer coordinates, as pixel centres are for images.
    """
    mask = TILE_SIZE - 1
    u0 = np.floor(u)
    v0 = np.floor(v)
    fu = (u - u0).astype(np.float32)
    fv = (v - v0).astype(np.float32)
    iu = u0.astype(np.int32) & mask
    iv = v0.astype(np.int32) & mask
    iu1 = (iu + 1) & mask
    row0 = tile * (TILE_SIZE * TILE_SIZE) + iv * TILE_SIZE
    row1 = tile * (TILE_SIZE * TILE_SIZE) + ((iv + 1) & mask) * TILE_SIZE
    a = atlas_flat[row0 + iu]
    b = atlas_flat[row0 + iu1]
    c = atlas_flat[row1 + iu]
    d = atlas_flat[row1 + iu1]
    top = a + (b - a) * fu
    return top + (c + (d - c) * fu - top) * fv
