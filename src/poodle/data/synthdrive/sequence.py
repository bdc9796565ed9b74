"""`SynthDriveSequence`: one deterministic synthetic driving video with exact labels, depth, flow, occlusion."""

from __future__ import annotations

import time as _time
from collections import OrderedDict

import numpy as np

from poodle.data.synthdrive.render import GBuffer, Intrinsics, Rays, cast, forward_flow, shade, visibility
from poodle.data.synthdrive.scenario import build_scene
from poodle.data.synthdrive.world import Scene


class SynthDriveError(ValueError):
    """Invalid SynthDrive argument (size, count, path); the CLI prints it as a one-line error."""


MIN_SIDE, MAX_SIDE, SIDE_MULTIPLE = 64, 2048, 8


def check_resolution(resolution) -> tuple[int, int]:
    """Validate (H, W): integers, multiples of 8, in [64, 2048]."""
    try:
        h, w = (int(v) for v in resolution)
    except (TypeError, ValueError):
        raise SynthDriveError(f"resolution must be (height, width), got {resolution!r}") from None
    for name, v in (("height", h), ("width", w)):
        if not (MIN_SIDE <= v <= MAX_SIDE) or v % SIDE_MULTIPLE:
            raise SynthDriveError(
                f"resolution {h}x{w}: {name} must be a multiple of {SIDE_MULTIPLE} in [{MIN_SIDE}, {MAX_SIDE}]"
            )
    return h, w


class SynthDriveSequence:
    """A synthetic driving sequence, fully determined by (seed, index); frames are rendered on demand.

    The scene (and so every label and motion) does not depend on `resolution` or `fps`; `t` is a frame index
    and time is t / fps seconds. Pass `scene=` to render a hand-built `Scene` (tests do).
    """

    def __init__(
        self,
        seed: int = 0,
        index: int = 0,
        resolution: tuple[int, int] = (128, 256),
        fps: float = 30,
        *,
        agents: bool = True,
        duration: float = 12.0,
        scene: Scene | None = None,
    ):
        self.seed, self.index = int(seed), int(index)
        self.resolution = check_resolution(resolution)
        if not fps > 0:
            raise SynthDriveError(f"fps must be positive, got {fps}")
        self.fps = float(fps)
        self.scene = scene if scene is not None else build_scene(seed, index, agents=agents, duration=duration)
        self.K = Intrinsics.for_resolution(self.resolution)
        self._gbuffers: OrderedDict[float, GBuffer] = OrderedDict()
        self._motion: OrderedDict[tuple[float, float], tuple[np.ndarray, ...]] = OrderedDict()

    def __repr__(self) -> str:
        return f"SynthDriveSequence(seed={self.seed}, index={self.index}, resolution={self.resolution}, fps={self.fps})"

    def _gbuffer(self, t: float) -> GBuffer:
        if t not in self._gbuffers:
            seconds = t / self.fps
            origin, M = self.scene.camera.pose(seconds)
            self._gbuffers[t] = cast(self.scene, Rays(self.K, origin, M), seconds)
            while len(self._gbuffers) > 4:  # flow needs two frames; a few more cover frame+labels+depth calls
                self._gbuffers.popitem(last=False)
        return self._gbuffers[t]

    def _shape(self, a: np.ndarray) -> np.ndarray:
        return a.reshape(self.resolution + a.shape[1:])

    def frame(self, t: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB."""
        col = shade(self.scene, self._gbuffer(t))
        return self._shape(np.clip(col, 0, 255).astype(np.uint8))

    def labels(self, t: int) -> np.ndarray:
        """(H, W) uint8 BDD100K trainIds (255 = ignore)."""
        return self._shape(self.scene.obj_label[self._gbuffer(t).oid])

    def object_ids(self, t: int) -> np.ndarray:
        """(H, W) int64 object (instance) ids, 0 for sky; `scene.obj_label[ids]` are the labels and
        `scene.obj_velocity[ids]` the object velocities in m/s."""
        return self._shape(self._gbuffer(t).oid.copy())

    def depth(self, t: int) -> np.ndarray:
        """(H, W) float32 camera z-depth in metres (inf for sky)."""
        return self._shape(self._gbuffer(t).depth.copy())

    def _forward(self, t: int, t2: int) -> tuple[np.ndarray, ...]:
        key = (t, t2)
        if key not in self._motion:
            gb = self._gbuffer(t)
            u2, v2, z2 = forward_flow(self.scene, gb, t2 / self.fps)
            visible = visibility(self.scene, gb, t2 / self.fps, u2, v2, z2)
            self._motion[key] = (u2, v2, z2, visible)
            while len(self._motion) > 2:
                self._motion.popitem(last=False)
        return self._motion[key]

    def flow(self, t: int, t2: int) -> np.ndarray:
        """(H, W, 2) float32 forward flow t -> t2 in pixels (dx, dy). Points that end up behind the camera get 0
        (they are always marked occluded)."""
        u2, v2, z2, _ = self._forward(t, t2)
        K = self.K
        u = np.tile(np.arange(K.width, dtype=np.float64), K.height)
        v = np.repeat(np.arange(K.height, dtype=np.float64), K.width)
        ok = z2 > 0
        out = np.stack([np.where(ok, u2 - u, 0.0), np.where(ok, v2 - v, 0.0)], axis=1).astype(np.float32)
        return self._shape(out)

    def occlusion(self, t: int, t2: int) -> np.ndarray:
        """(H, W) bool, True where the pixel's surface point of frame t is not visible in frame t2."""
        return self._shape(~self._forward(t, t2)[3])


def benchmark(resolution=(128, 256), frames: int = 150, sequences: int = 3, seed: int = 0) -> float:
    """Frames per second for rendering frame + labels (single process; pin it to one core for one-core numbers)."""
    total = 0.0
    count = 0
    for index in range(sequences):
        seq = SynthDriveSequence(seed=seed, index=index, resolution=resolution)
        seq.frame(0)  # warm up (scene construction is not part of the per-frame cost)
        start = _time.perf_counter()
        for t in range(1, frames // sequences + 1):
            seq.frame(t)
            seq.labels(t)
            count += 1
        total += _time.perf_counter() - start
    return count / total
