"""Random-access frame-pair reads from a video file (seek + decode + RGB), and full dataset items (+ outer crop).

Writes a synthetic H.264 test video unless --video is given (BDD100K-like: 720p, 30 fps, a keyframe every --gop
frames), then reads random pairs (t, t + dt), dt ~ U{15..30}, one call per pair, in one process.

Run: PYTHONPATH=src python benchmarks/video_read_speed.py [--video FILE] [--height 720 --width 1280 --frames 300]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from poodle.data.pairs import FramePairDataset
from poodle.data.video import ReadStats, probe_video, read_frames


def write_test_video(path: Path, frames: int, height: int, width: int, gop: int) -> None:
    y, x = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as container:
        opts = {"preset": "veryfast", "crf": "23", "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        stream = container.add_stream("libx264", rate=30, options=opts)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):  # a moving texture, so P-frames carry real work
            img = (128 + 100 * np.sin((x + 3 * i) / 17.0) * np.cos((y - 2 * i) / 23.0)).astype(np.uint8)
            rgb = np.stack([img, np.roll(img, i, 1), 255 - img], -1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--video", type=Path)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--gop", type=int, default=30)
    p.add_argument("--pairs", type=int, default=30)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.video
        if path is None:
            path = Path(tmp) / "bench.mp4"
            write_test_video(path, args.frames, args.height, args.width, args.gop)
        info = probe_video(path)
        rng = np.random.default_rng(0)
        stats = ReadStats()
        start = time.perf_counter()
        for _ in range(args.pairs):
            t = int(rng.integers(0, info.frame_count - 30))
            read_frames(path, [t, t + int(rng.integers(15, 31))], info, stats=stats)
        elapsed = time.perf_counter() - start
        print(
            f"{info.width}x{info.height} {info.codec}, {info.frame_count} frames: random pairs "
            f"{2 * args.pairs / elapsed:.1f} frames/s returned ({stats.decoded / elapsed:.0f} frames/s decoded, "
            f"{stats.decoded / (2 * args.pairs):.1f} decoded per returned frame)"
        )
        ds = FramePairDataset([info], resolution=(512, 1024), canvas=(1080, 1920), repeat=2)
        start = time.perf_counter()
        for key in range(args.pairs // 2):
            ds[key]
        elapsed = time.perf_counter() - start
        print(f"dataset items (R=2, 512x1024 outer crop): {args.pairs / elapsed:.1f} pairs/s")


if __name__ == "__main__":
    main()
