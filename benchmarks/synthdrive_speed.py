"""SynthDrive rendering speed (frame + labels) at 128x256 on one core.

Run: PYTHONPATH=src python benchmarks/synthdrive_speed.py [--height 128 --width 256 --frames 150]
"""

from __future__ import annotations

import argparse
import os

from poodle.data.synthdrive import benchmark


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--frames", type=int, default=150)
    args = p.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    fps = benchmark(resolution=(args.height, args.width), frames=args.frames)
    print(f"SynthDrive rendering (frame + labels), {args.height}x{args.width}, one core: {fps:.1f} frames/s")


if __name__ == "__main__":
    main()
