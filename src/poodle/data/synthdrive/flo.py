"""Middlebury .flo optical-flow files: float32 magic 202021.25, int32 width, int32 height, then row-major
interleaved (dx, dy) float32, all little-endian."""

from __future__ import annotations

from pathlib import Path

import numpy as np

FLO_MAGIC = 202021.25


def write_flo(path: str | Path, flow: np.ndarray) -> None:
    """Write an (H, W, 2) flow (channel 0 = dx, 1 = dy, pixels) to `path`."""
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow must have shape (H, W, 2), got {flow.shape}")
    h, w = flow.shape[:2]
    with open(path, "wb") as f:
        np.array([FLO_MAGIC], dtype="<f4").tofile(f)
        np.array([w, h], dtype="<i4").tofile(f)
        np.ascontiguousarray(flow, dtype="<f4").tofile(f)


def read_flo(path: str | Path) -> np.ndarray:
    """Read a .flo file into an (H, W, 2) float32 array."""
    with open(path, "rb") as f:
        magic = np.fromfile(f, dtype="<f4", count=1)
        if magic.size != 1 or magic[0] != np.float32(FLO_MAGIC):
            raise ValueError(f"{path}: not a .flo file (bad magic number)")
        w, h = (int(v) for v in np.fromfile(f, dtype="<i4", count=2))
        data = np.fromfile(f, dtype="<f4", count=w * h * 2)
    if data.size != w * h * 2:
        raise ValueError(f"{path}: truncated .flo file ({data.size} of {w * h * 2} values)")
    return data.reshape(h, w, 2).astype(np.float32)
