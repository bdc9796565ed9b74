"""The SynthDrive world: a 3D scene of axis-aligned planar primitives, a camera path and the lighting.

Coordinates are metres: X right, Y up, Z forward along the road; the road surface is the plane Y = 0. Everything
visible is one of
  * the ground plane, split across X into terrain | sidewalk | road | sidewalk | terrain (cross streets are road),
  * facade layers: vertical planes X = const split along Z into segments (building, wall, fence, vegetation, gap),
  * boxes (axis-aligned, optionally moving with constant velocity): vehicles, people, poles, lights, signs.
Each primitive belongs to an *object* (one id, one label, one colour, one texture). Objects move rigidly by
translation, so any surface point at time t is found at `point + velocity * (t2 - t)` at time t2: that is what
makes the flow and occlusion ground truth exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from poodle.data.classes import CLASS_ID
from poodle.data.synthdrive.textures import TILE, shared_atlas

SKY_OID = 0  # object id 0 is the sky (infinitely far, never moves)

# Face axis of a surface: its normal is along X (0), Y (1) or Z (2). Faces are shaded by a view-independent
# constant per axis (sun from above), so brightness is constant over time.
FACE_SHADE = np.array([0.82, 1.0, 0.92], dtype=np.float32)


@dataclass
class CameraPath:
    """A smooth, analytic ego trajectory: forward motion with sway, bounce and yaw/pitch jitter."""

    height: float = 1.4
    x0: float = 0.0
    z0: float = 0.0
    speed: float = 10.0  # m/s
    speed_wobble: float = 0.1  # relative speed variation
    wobble_freq: float = 0.3  # Hz
    sway_amp: float = 0.1  # lateral, metres
    sway_freq: float = 0.2
    bounce_amp: float = 0.01  # vertical, metres
    bounce_freq: float = 1.7
    yaw0: float = 0.0  # rad, positive turns right
    yaw_amp: float = 0.01
    yaw_freq: float = 0.25
    pitch0: float = -0.02  # rad, positive looks up
    pitch_amp: float = 0.004
    pitch_freq: float = 1.3
    phase: tuple[float, float, float, float, float] = (0.0, 0.0, 0.0, 0.0, 0.0)

    def pose(self, time: float) -> tuple[np.ndarray, np.ndarray]:
        """Camera origin (3,) and the (3, 3) matrix M whose columns are the camera's right, down and forward
        axes in world coordinates, so a world direction is M @ (x_cam, y_cam, z_cam) and M.T undoes it."""
        p = self.phase
        w = 2 * math.pi * self.wobble_freq
        z = self.z0 + self.speed * time
        if w > 0:
            z += self.speed * self.speed_wobble / w * math.sin(w * time + p[0])
        x = self.x0 + self.sway_amp * math.sin(2 * math.pi * self.sway_freq * time + p[1])
        y = self.height + self.bounce_amp * math.sin(2 * math.pi * self.bounce_freq * time + p[2])
        yaw = self.yaw0 + self.yaw_amp * math.sin(2 * math.pi * self.yaw_freq * time + p[3])
        pitch = self.pitch0 + self.pitch_amp * math.sin(2 * math.pi * self.pitch_freq * time + p[4])
        forward = np.array([math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)])
        right = np.array([math.cos(yaw), 0.0, -math.sin(yaw)])
        up = np.cross(forward, right)
        return np.array([x, y, z]), np.stack([right, -up, forward], axis=1)


@dataclass
class Lighting:
    """Per-sequence illumination and weather; applied after texturing so colour alone is not the class."""

    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)  # brightness x tint
    fog_color: tuple[float, float, float] = (200.0, 205.0, 215.0)
    fog_distance: float = 400.0  # metres for 1 - 1/e of the haze
    fog_max: float = 0.6
    sky_top: tuple[float, float, float] = (70.0, 120.0, 190.0)
    sky_horizon: tuple[float, float, float] = (180.0, 200.0, 225.0)
    cloud_amount: float = 0.4
    cloud_color: tuple[float, float, float] = (235.0, 235.0, 240.0)


@dataclass
class FacadeLayer:
    """A vertical plane X = x, split along Z at `edges` into segments; segment i spans edges[i]..edges[i+1].

    oid[i] = -1 is a gap. The top edge is top + amp * sin(freq * Z + phase) (wavy for vegetation canopies).
    """

    x: float
    edges: np.ndarray
    oid: np.ndarray
    top: np.ndarray
    amp: np.ndarray
    freq: np.ndarray
    phase: np.ndarray


@dataclass
class RoadMarkings:
    """Painted lines on the road (static, so they are part of the road's texture)."""

    dashed_x: tuple[float, ...] = ()  # lane separators
    solid_x: tuple[float, ...] = ()  # edge / centre lines
    half_width: float = 0.08
    dash_period: float = 9.0
    dash_length: float = 3.0
    centre_yellow: bool = False


@dataclass
class Scene:
    """Everything needed to render any time: geometry, object table, camera, lighting and textures."""

    camera: CameraPath
    lighting: Lighting
    atlas: np.ndarray
    ground_edges: np.ndarray  # (k-1,) X boundaries between ground regions
    ground_oid: np.ndarray  # (k,) object of each region
    cross_streets: np.ndarray  # (m, 2) Z ranges where the whole ground is road
    road_oid: int
    facades: list[FacadeLayer]
    box_lo: np.ndarray  # (n, 3) at time 0
    box_hi: np.ndarray
    box_oid: np.ndarray  # (n,)
    obj_label: np.ndarray  # (n_obj,) uint8
    obj_color: np.ndarray  # (n_obj, 3) float32, 0..255
    obj_tile: np.ndarray  # (n_obj,) int64
    obj_scale: np.ndarray  # (n_obj,) float32 texels per metre
    obj_origin: np.ndarray  # (n_obj, 3) float32, texture origin at time 0
    obj_velocity: np.ndarray  # (n_obj, 3) float64, m/s
    markings: RoadMarkings = field(default_factory=RoadMarkings)

    @property
    def box_velocity(self) -> np.ndarray:
        return self.obj_velocity[self.box_oid]


class SceneBuilder:
    """Accumulates objects, boxes and facade layers, then freezes them into a `Scene`."""

    def __init__(self, rng: np.random.Generator, camera: CameraPath | None = None, lighting: Lighting | None = None):
        self.rng = rng
        self.camera = camera or CameraPath()
        self.lighting = lighting or Lighting()
        self._label: list[int] = []
        self._color: list[tuple[float, float, float]] = []
        self._tile: list[int] = []
        self._scale: list[float] = []
        self._origin: list[tuple[float, float, float]] = []
        self._velocity: list[tuple[float, float, float]] = []
        self._box_lo: list[tuple[float, float, float]] = []
        self._box_hi: list[tuple[float, float, float]] = []
        self._box_oid: list[int] = []
        self.facades: list[FacadeLayer] = []
        self.ground_edges: list[float] = []
        self.ground_oid: list[int] = []
        self.cross_streets: list[tuple[float, float]] = []
        self.road_oid = -1
        self.markings = RoadMarkings()
        sky = self.add_object(CLASS_ID["sky"], (0, 0, 0), "flat", 0.0)
        assert sky == SKY_OID

    def add_object(self, label, color, tile: str, scale: float, origin=(0.0, 0.0, 0.0), velocity=(0.0, 0.0, 0.0)):
        self._label.append(int(label))
        self._color.append(tuple(float(c) for c in color))
        self._tile.append(TILE[tile])
        self._scale.append(float(scale))
        self._origin.append(tuple(float(o) for o in origin))
        self._velocity.append(tuple(float(v) for v in velocity))
        return len(self._label) - 1

    def add_box(self, lo, hi, label, color, tile: str, scale: float, velocity=(0.0, 0.0, 0.0), origin=None) -> int:
        """An axis-aligned box (lo, hi corners at time 0) that is its own object; returns the object id."""
        oid = self.add_object(label, color, tile, scale, lo if origin is None else origin, velocity)
        self._box_lo.append(tuple(float(v) for v in lo))
        self._box_hi.append(tuple(float(v) for v in hi))
        self._box_oid.append(oid)
        return oid

    def set_ground(self, edges: list[float], oids: list[int], road_oid: int) -> None:
        self.ground_edges, self.ground_oid, self.road_oid = list(edges), list(oids), road_oid

    def add_facade(self, x: float, segments: list[tuple[float, float, int, float, float, float, float]]) -> None:
        """segments: (z0, z1, oid or -1, top, amp, freq, phase), contiguous and sorted along Z."""
        edges = [segments[0][0]] + [s[1] for s in segments]
        cols = list(zip(*[s[2:] for s in segments]))
        self.facades.append(
            FacadeLayer(
                x=float(x),
                edges=np.asarray(edges, dtype=np.float32),
                oid=np.asarray(cols[0], dtype=np.int64),
                top=np.asarray(cols[1], dtype=np.float32),
                amp=np.asarray(cols[2], dtype=np.float32),
                freq=np.asarray(cols[3], dtype=np.float32),
                phase=np.asarray(cols[4], dtype=np.float32),
            )
        )

    def build(self) -> Scene:
        n_box = len(self._box_oid)
        return Scene(
            camera=self.camera,
            lighting=self.lighting,
            atlas=shared_atlas(),
            ground_edges=np.asarray(self.ground_edges, dtype=np.float32),
            ground_oid=np.asarray(self.ground_oid or [SKY_OID], dtype=np.int64),
            cross_streets=np.asarray(self.cross_streets, dtype=np.float32).reshape(-1, 2),
            road_oid=self.road_oid,
            facades=self.facades,
            box_lo=np.asarray(self._box_lo, dtype=np.float64).reshape(n_box, 3),
            box_hi=np.asarray(self._box_hi, dtype=np.float64).reshape(n_box, 3),
            box_oid=np.asarray(self._box_oid, dtype=np.int64),
            obj_label=np.asarray(self._label, dtype=np.uint8),
            obj_color=np.asarray(self._color, dtype=np.float32),
            obj_tile=np.asarray(self._tile, dtype=np.int64),
            obj_scale=np.asarray(self._scale, dtype=np.float32),
            obj_origin=np.asarray(self._origin, dtype=np.float32),
            obj_velocity=np.asarray(self._velocity, dtype=np.float64),
            markings=self.markings,
        )
