"""Vectorised ray casting of a `Scene`, shading, and exact forward flow / occlusion ground truth.

Rays go through pixel centres (integer pixel coordinates) of a pinhole camera. A ray's direction is
d = M @ ((u - cx) / f, (v - cy) / f, 1), so its parameter at a hit equals the camera z-depth. The cast records
per pixel the nearest surface's depth, object id and face axis (a "G-buffer"); everything else (colour, labels,
flow, occlusion) follows from it. Because the same caster can shoot rays through arbitrary sub-pixel points,
visibility at t2 is tested exactly where a point lands, not at the nearest pixel of a depth buffer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from poodle.data.synthdrive.textures import TILE, sample, sample_filtered
from poodle.data.synthdrive.world import FACE_SHADE, SKY_OID, Scene

NEAR = 0.05  # metres; surfaces closer than this to the camera plane are not drawn
HFOV_DEG = 65.0  # horizontal field of view (BDD100K's dashcams are roughly 60-70 degrees)
DEPTH_TOL_REL = 1e-3  # visibility test: same object and |depth difference| <= rel * depth + abs
DEPTH_TOL_ABS = 1e-3


@dataclass(frozen=True)
class Intrinsics:
    height: int
    width: int
    f: float
    cx: float
    cy: float

    @classmethod
    def for_resolution(cls, resolution: tuple[int, int]) -> Intrinsics:
        h, w = resolution
        f = (w / 2) / math.tan(math.radians(HFOV_DEG) / 2)
        # Pixel (x, y) is the centre of column x / row y, so the principal point sits between the middle pixels.
        return cls(h, w, f, (w - 1) / 2, (h - 1) / 2)


class Rays:
    """Rays from one camera pose through the full pixel grid (u, v None) or through given sub-pixel points."""

    def __init__(self, K: Intrinsics, origin: np.ndarray, M: np.ndarray, u=None, v=None):
        self.K = K
        self.origin = tuple(float(o) for o in origin)  # python floats keep arrays float32 (NEP 50)
        self.M = M
        self.grid = u is None
        if self.grid:
            a = (np.arange(K.width) - K.cx) / K.f
            b = (np.arange(K.height) - K.cy) / K.f
            self.d = [
                (M[k, 0] * a[None, :] + (M[k, 1] * b + M[k, 2])[:, None]).astype(np.float32).ravel() for k in range(3)
            ]
        else:
            self.u = np.asarray(u, dtype=np.float32)
            self.v = np.asarray(v, dtype=np.float32)
            a = (self.u - K.cx) / K.f
            b = (self.v - K.cy) / K.f
            self.d = [(float(M[k, 0]) * a + float(M[k, 1]) * b + float(M[k, 2])).astype(np.float32) for k in range(3)]
        self.n = self.d[0].size
        with np.errstate(divide="ignore"):
            # Guard exact zeros so 1/d is a huge finite number of the right sign rather than inf/nan.
            self.inv = [1.0 / np.where(np.abs(d) < 1e-12, np.float32(1e-12), d) for d in self.d]

    def pairs(self, u0, u1, v0, v1) -> tuple[np.ndarray, np.ndarray]:
        """All (ray index, rectangle index) pairs with the ray's pixel position inside rectangle
        [u0, u1] x [v0, v1] (arrays, one entry per rectangle)."""
        if self.grid:
            w, h = self.K.width, self.K.height
            c0 = np.ceil(np.clip(u0, 0, w - 1)).astype(np.int64)
            c1 = np.floor(np.clip(u1, -1, w - 1)).astype(np.int64)
            r0 = np.ceil(np.clip(v0, 0, h - 1)).astype(np.int64)
            r1 = np.floor(np.clip(v1, -1, h - 1)).astype(np.int64)
            cols = np.maximum(c1 - c0 + 1, 0)
            rows = np.maximum(r1 - r0 + 1, 0)
            sizes = cols * rows
            which = np.repeat(np.arange(len(sizes)), sizes)
            k = np.arange(which.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
            wc = cols[which]
            return (r0[which] + k // wc) * w + c0[which] + k % wc, which
        # Arbitrary points: bucket them by row so each rectangle only scans the points of its rows.
        order = np.argsort(self.v, kind="stable")
        vs = self.v[order]
        out_pix, out_which = [], []
        for i in range(len(u0)):
            a, b = np.searchsorted(vs, v0[i], side="left"), np.searchsorted(vs, v1[i], side="right")
            cand = order[a:b]
            uu = self.u[cand]
            cand = cand[(uu >= u0[i]) & (uu <= u1[i])]
            out_pix.append(cand)
            out_which.append(np.full(cand.size, i, dtype=np.int64))
        if not out_pix:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(out_pix), np.concatenate(out_which)


@dataclass
class GBuffer:
    rays: Rays
    time: float
    depth: np.ndarray  # (n,) float32 camera z-depth, inf for sky
    oid: np.ndarray  # (n,) int64 object id, 0 for sky
    face: np.ndarray  # (n,) int8 face normal axis


def cast(scene: Scene, rays: Rays, time: float) -> GBuffer:
    """Nearest surface along every ray at `time` (seconds)."""
    ox, oy, oz = rays.origin
    dx, dy, dz = rays.d
    n = rays.n
    depth = np.full(n, np.inf, dtype=np.float32)
    oid = np.zeros(n, dtype=np.int64)
    face = np.zeros(n, dtype=np.int8)

    # Ground plane Y = 0.
    gi = np.flatnonzero(dy < -1e-7)
    if gi.size:
        t = np.float32(-oy) * rays.inv[1][gi]
        gx = ox + t * dx[gi]
        gz = oz + t * dz[gi]
        g_oid = scene.ground_oid[np.searchsorted(scene.ground_edges, gx)]
        if len(scene.cross_streets):
            # Inside a cross street (an odd interval of the sorted street edges) the whole ground is road.
            in_street = (np.searchsorted(scene.cross_streets.ravel(), gz, side="right") % 2) == 1
            g_oid = np.where(in_street, scene.road_oid, g_oid)
        depth[gi] = t
        oid[gi] = g_oid
        face[gi] = 1

    # Facade layers X = const.
    left = right = None
    for layer in scene.facades:
        if layer.x < ox:
            sel = left = np.flatnonzero(dx < -1e-7) if left is None else left
        else:
            sel = right = np.flatnonzero(dx > 1e-7) if right is None else right
        if not sel.size:
            continue
        t = np.float32(layer.x - ox) * rays.inv[0][sel]
        z = oz + t * dz[sel]
        y = oy + t * dy[sel]
        seg = np.searchsorted(layer.edges, z, side="right") - 1
        inside = (seg >= 0) & (seg < len(layer.oid))
        seg = np.clip(seg, 0, len(layer.oid) - 1)
        top = layer.top[seg]
        if layer.amp.any():
            top = top + layer.amp[seg] * np.sin(layer.freq[seg] * z + layer.phase[seg])
        o = layer.oid[seg]
        hit = inside & (o >= 0) & (y >= 0) & (y < top) & (t < depth[sel])
        idx = sel[hit]
        depth[idx] = t[hit]
        oid[idx] = o[hit]
        face[idx] = 0

    if len(scene.box_oid):
        _cast_boxes(scene, rays, time, depth, oid, face)
    return GBuffer(rays, time, depth, oid, face)


def _cast_boxes(scene: Scene, rays: Rays, time: float, depth, oid, face) -> None:
    K = rays.K
    origin = np.asarray(rays.origin)
    shift = scene.box_velocity * time
    lo, hi = scene.box_lo + shift, scene.box_hi + shift
    # Screen-space bounds from the 8 projected corners: rays outside them cannot hit the (convex) box.
    corners = np.stack([np.where(np.array(bits)[None, :], hi, lo) for bits in np.ndindex(2, 2, 2)], axis=1)
    cam = (corners - origin) @ rays.M  # (n_box, 8, 3) camera coordinates
    z = cam[..., 2]
    behind = z < NEAR
    zc = np.where(behind, 1.0, z)
    pu = K.f * cam[..., 0] / zc + K.cx
    pv = K.f * cam[..., 1] / zc + K.cy
    partial = behind.any(1)  # straddles the camera plane: fall back to the whole image
    u0 = np.where(partial, -np.inf, pu.min(1))
    u1 = np.where(partial, np.inf, pu.max(1))
    v0 = np.where(partial, -np.inf, pv.min(1))
    v1 = np.where(partial, np.inf, pv.max(1))
    boxes = np.flatnonzero(~behind.all(1) & (u1 >= -1) & (u0 <= K.width) & (v1 >= -1) & (v0 <= K.height))
    if not boxes.size:
        return
    pix, which = rays.pairs(u0[boxes], u1[boxes], v0[boxes], v1[boxes])
    if not pix.size:
        return
    box = boxes[which]
    # Classic slab test over all (pixel, box) pairs at once; a camera inside a box yields t_near < NEAR.
    t_near = t_far = f_near = None
    for axis in range(3):
        inv = rays.inv[axis][pix]
        t1 = (lo[:, axis] - origin[axis]).astype(np.float32)[box] * inv
        t2 = (hi[:, axis] - origin[axis]).astype(np.float32)[box] * inv
        enter, leave = np.minimum(t1, t2), np.maximum(t1, t2)
        if t_near is None:
            t_near, t_far, f_near = enter, leave, np.zeros(pix.size, dtype=np.int8)
        else:
            better = enter > t_near
            t_near = np.where(better, enter, t_near)
            f_near = np.where(better, np.int8(axis), f_near)
            t_far = np.minimum(t_far, leave)
    hit = np.flatnonzero((t_near <= t_far) & (t_near > NEAR) & (t_near < depth[pix]))
    if not hit.size:
        return
    p, t = pix[hit], t_near[hit]
    np.minimum.at(depth, p, t)
    win = hit[t == depth[p]]  # the nearest box per pixel
    oid[pix[win]] = scene.box_oid[box[win]]
    face[pix[win]] = f_near[win]


def surface_points(gb: GBuffer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World coordinates of the visible points (sky pixels get a unit-depth dummy)."""
    ox, oy, oz = gb.rays.origin
    dep = np.where(gb.oid == SKY_OID, np.float32(1.0), gb.depth)
    return tuple(o + dep * d for o, d in zip((ox, oy, oz), gb.rays.d))


def shade(scene: Scene, gb: GBuffer) -> np.ndarray:
    """(n, 3) float32 RGB in 0..255 (unclipped) for a G-buffer."""
    light = scene.lighting
    o, face = gb.oid, gb.face
    sky = o == SKY_OID
    px, py, pz = surface_points(gb)
    # One gather of the per-object table: texture origin (moving with the object), scale, colour, tile.
    table = np.concatenate(
        [
            scene.obj_origin + scene.obj_velocity * gb.time,
            scene.obj_scale[:, None],
            scene.obj_color,
            scene.obj_tile[:, None],
        ],
        axis=1,
        dtype=np.float32,
    )[o]
    # Surface-local coordinates: the point relative to its object's texture origin.
    lx = px - table[:, 0]
    ly = py - table[:, 1]
    lz = pz - table[:, 2]
    su = np.where(face == 0, lz, lx) * table[:, 3]
    sv = np.where(face == 1, lz, ly) * table[:, 3]
    # Pixel footprint on the surface (metres per pixel, stretched at grazing angles) picks the mip level.
    dx, dy, dz = gb.rays.d
    d2 = dx * dx + dy * dy + dz * dz
    d_normal = np.abs(np.where(face == 0, dx, np.where(face == 1, dy, dz)))
    dist = np.where(sky, np.float32(1.0), gb.depth) * np.sqrt(d2) / np.float32(gb.rays.K.f)
    footprint = dist * np.sqrt(d2) / np.maximum(d_normal, np.float32(0.02))
    tex = sample_filtered(scene.atlas.ravel(), table[:, 7].astype(np.int32), su, sv, footprint * table[:, 3])
    col = table[:, 4:7] * (tex * FACE_SHADE[face])[:, None]

    ri = np.flatnonzero(o == scene.road_oid)
    if ri.size and (scene.markings.dashed_x or scene.markings.solid_x):
        _paint_markings(scene, col, ri, px[ri], pz[ri], dist[ri], footprint[ri])

    haze = np.exp(gb.depth * np.float32(-1.0 / light.fog_distance))  # sky: exp(-inf) = 0
    haze = np.float32(light.fog_max) - np.float32(light.fog_max) * haze
    col += (np.asarray(light.fog_color, dtype=np.float32) - col) * haze[:, None]

    si = np.flatnonzero(sky)
    if si.size:
        col[si] = _sky_color(scene, [d[si] for d in gb.rays.d])
    return col * np.asarray(light.gain, dtype=np.float32)


def _paint_markings(scene: Scene, col, ri, x, z, across, along) -> None:
    """Lane lines, anti-aliased with the pixel footprint across (X) and along (Z) the road."""
    mk = scene.markings
    lines = sorted([(lx, 1) for lx in mk.dashed_x] + [(lx, 0) for lx in mk.solid_x])
    # A sentinel line far away on each side makes "nearest line" well defined for one line too.
    lines = [(-1e4, 0), *lines, (1e4, 0)]
    pos = np.asarray([p for p, _ in lines], dtype=np.float32)
    dashed = np.asarray([d for _, d in lines], dtype=bool)
    # Nearest line only (lines are metres apart, stripes centimetres wide).
    k = np.clip(np.searchsorted(pos, x), 1, len(pos) - 1)
    left_closer = (x - pos[k - 1]) < (pos[k] - x)
    k = np.where(left_closer, k - 1, k)
    dist = np.abs(x - pos[k])
    # Box-filtered stripe: coverage of a footprint-wide pixel by the stripe, so thin far lines fade, not flicker.
    ramp = np.maximum(across, np.float32(0.03))
    m = np.clip((np.float32(mk.half_width) - dist) / ramp + 0.5, 0.0, 1.0)
    m *= np.minimum(np.float32(1.0), np.float32(2 * mk.half_width) / ramp)
    # Dashes: a soft box along Z, fading to the duty cycle once a pixel spans about half a period.
    period, length = np.float32(mk.dash_period), np.float32(mk.dash_length)
    phase = z % period
    ramp_z = np.maximum(along, np.float32(0.05))
    dash = np.clip(np.minimum(phase + ramp_z / 2, length - phase) / ramp_z + 0.5, 0.0, 1.0)
    fade = np.clip(along / (period / 2), 0.0, 1.0)
    dash = dash + (length / period - dash) * fade
    m = np.where(dashed[k], m * dash, m)
    sel = np.flatnonzero(m > 0)
    if not sel.size:
        return
    paint = np.where(
        (mk.centre_yellow & (pos[k[sel]] == 0.0))[:, None], np.float32([215, 175, 50]), np.float32([215, 215, 205])
    )
    j = ri[sel]
    col[j] += (paint - col[j]) * m[sel, None]


def _sky_color(scene: Scene, d: list[np.ndarray]) -> np.ndarray:
    """Sky radiance as a function of direction only (it is infinitely far: only camera rotation moves it)."""
    light = scene.lighting
    dx, dy, dz = d
    horiz = np.sqrt(dx * dx + dz * dz)
    elev = np.arctan2(dy, horiz)
    azim = np.arctan2(dx, dz)
    w = np.clip(elev * np.float32(3.0), 0.0, 1.0)[:, None] ** 0.7
    top = np.asarray(light.sky_top, np.float32)
    hor = np.asarray(light.sky_horizon, np.float32)
    col = hor + (top - hor) * w
    if light.cloud_amount > 0:
        tile = np.full(dx.shape, TILE["clouds"], dtype=np.int64)
        c = sample(scene.atlas[0].ravel(), tile, azim * np.float32(60.0), elev * np.float32(120.0))
        cover = np.clip((c - 0.35) * 1.5, 0.0, 1.0) * light.cloud_amount * np.clip(elev * 20.0, 0.0, 1.0)
        col += (np.asarray(light.cloud_color, np.float32) - col) * cover[:, None]
    return col + (np.asarray(light.fog_color, np.float32) - col) * np.float32(light.fog_max)


def forward_flow(scene: Scene, gb: GBuffer, time2: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each pixel's surface point lands at `time2`: (u2, v2, z2) with z2 the camera depth (<= NEAR:
    behind the camera). Sky points are directions: only the camera rotation moves them (z2 > 0 is in front)."""
    K = gb.rays.K
    sky = gb.oid == SKY_OID
    # float64 here: world coordinates are hundreds of metres and the flow should be exact to ~1e-6 px.
    d = np.stack(gb.rays.d, axis=1).astype(np.float64)
    dep = np.where(sky, 1.0, gb.depth.astype(np.float64))
    p = np.asarray(gb.rays.origin) + dep[:, None] * d + scene.obj_velocity[gb.oid] * (time2 - gb.time)
    origin2, M2 = scene.camera.pose(time2)
    # Sky: a direction; only the rotation acts on it.
    cam = np.where(sky[:, None], d, p - origin2) @ M2
    z2 = cam[:, 2]
    zsafe = np.where(z2 > 1e-9, z2, 1.0)
    u2 = K.f * cam[:, 0] / zsafe + K.cx
    v2 = K.f * cam[:, 1] / zsafe + K.cy
    return u2, v2, np.where(sky, np.where(z2 > 1e-9, np.inf, -np.inf), z2)


def visibility(scene: Scene, gb: GBuffer, time2: float, u2, v2, z2) -> np.ndarray:
    """True where the surface point of each pixel is visible at `time2` (in the image and not hidden)."""
    K = gb.rays.K
    inview = (z2 > NEAR) & (u2 >= -0.5) & (u2 <= K.width - 0.5) & (v2 >= -0.5) & (v2 <= K.height - 0.5)
    idx = np.flatnonzero(inview)
    visible = np.zeros(gb.oid.shape, dtype=bool)
    if idx.size:
        origin2, M2 = scene.camera.pose(time2)
        probe = cast(scene, Rays(K, origin2, M2, u2[idx], v2[idx]), time2)
        same = probe.oid == gb.oid[idx]
        zi = z2[idx]
        with np.errstate(invalid="ignore"):  # inf - inf for the sky, which only needs the same object id
            close = np.isinf(zi) | (np.abs(probe.depth - zi) <= DEPTH_TOL_REL * np.abs(zi) + DEPTH_TOL_ABS)
        visible[idx] = same & close
    return visible
