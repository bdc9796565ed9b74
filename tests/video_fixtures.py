"""Tiny real videos for the data tests: every frame carries its own index as a block code.

The top half of a frame is a 2 x 5 grid of black/white blocks holding the index in binary (10 bits, so up to 1023
frames); the bottom half is a static smooth texture, identical in every frame. Blocks are large enough to survive
lossy coding at high quality, so `decode_index` reads back exactly the index that was written.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

BITS_ROWS, BITS_COLS = 2, 5


def _texture(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 128 + 80 * np.sin(x / 6.0) * np.cos(y / 9.0)
    g = 128 + 80 * np.cos(x / 11.0 + y / 7.0)
    b = 128 + 60 * np.sin((x + 2 * y) / 13.0)
    return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)


def coded_frame(index: int, h: int, w: int, static: bool = False) -> np.ndarray:
    """An (h, w, 3) RGB frame whose top half encodes `index` (or is static texture too when `static`)."""
    frame = _texture(h, w)
    if static:
        return frame
    bh, bw = (h // 2) // BITS_ROWS, w // BITS_COLS
    for bit in range(BITS_ROWS * BITS_COLS):
        r, c = divmod(bit, BITS_COLS)
        frame[r * bh : (r + 1) * bh, c * bw : (c + 1) * bw] = 255 if (index >> bit) & 1 else 0
    return frame


def decode_index(frame: np.ndarray) -> int:
    """Read back the index written by `coded_frame` from an upright (h, w, 3) frame."""
    h, w = frame.shape[:2]
    bh, bw = (h // 2) // BITS_ROWS, w // BITS_COLS
    grey = frame.astype(np.float32).mean(-1)
    index = 0
    for bit in range(BITS_ROWS * BITS_COLS):
        r, c = divmod(bit, BITS_COLS)
        block = grey[r * bh + bh // 4 : (r + 1) * bh - bh // 4, c * bw + bw // 4 : (c + 1) * bw - bw // 4]
        index |= int(block.mean() > 128) << bit
    return index


def write_video(
    path: str | Path,
    n: int,
    size: tuple[int, int] = (64, 96),
    fps: int = 30,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    gop: int | None = None,
    rotation: int = 0,
    times: Sequence[float] | None = None,
    static: bool = False,
    faststart: bool = False,
) -> Path:
    """Write `n` coded frames of (h, w) = `size`. `times` (seconds) gives variable frame timing; `rotation` writes a
    display matrix (counter-clockwise degrees, PyAV's convention); `gop` fixes the keyframe interval."""
    path = Path(path)
    h, w = size
    options: dict[str, str] = {}
    container_options = {"movflags": "faststart"} if faststart else {}
    if codec == "libx264":
        options = {"crf": "8", "preset": "ultrafast"}
        if gop:
            options["x264-params"] = f"keyint={gop}:min-keyint={gop}:scenecut=0"
    with av.open(str(path), "w", options=container_options) as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        if codec == "mpeg4":
            stream.codec_context.bit_rate = 4_000_000
            stream.codec_context.qmax = 3
        if gop:
            stream.codec_context.gop_size = gop
        if rotation:
            stream.set_display_rotation(rotation)
        tb = Fraction(1, 1000) if times is not None else Fraction(1, fps)
        if times is not None:
            stream.codec_context.time_base = tb
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(coded_frame(i, h, w, static), format="rgb24")
            frame.pts = int(round(times[i] * 1000)) if times is not None else i
            frame.time_base = tb
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
