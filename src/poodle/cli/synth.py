"""`poodle synth OUT`: generate a SynthDrive dataset in the BDD100K on-disk layout (or benchmark the renderer)."""

from __future__ import annotations

import argparse
import os
import re

from poodle.cli import UserError


def _resolution(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected HxW such as 128x256, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def add_arguments(p: argparse.ArgumentParser) -> None:
    from poodle.data.synthdrive import PRESETS

    p.add_argument("out", nargs="?", help="output folder (created; must be empty unless --overwrite)")
    p.add_argument("--preset", default="small", choices=sorted(PRESETS), help="size preset (default: small)")
    p.add_argument("--seed", type=int, default=0, help="world seed (default: 0)")
    p.add_argument("--resolution", type=_resolution, metavar="HxW", help="override the preset's frame size")
    p.add_argument("--videos", type=int, metavar="N", help="train videos")
    p.add_argument("--val-videos", type=int, metavar="N", help="val videos")
    p.add_argument("--images", type=int, metavar="N", help="train labelled images")
    p.add_argument("--val-images", type=int, metavar="N", help="val labelled images")
    p.add_argument("--seconds", type=float, metavar="S", help="video length in seconds")
    p.add_argument("--fps", type=int, help="frame rate (default 30)")
    p.add_argument("--flow-pairs", type=int, metavar="N", help="flow pairs per video")
    p.add_argument("--overwrite", action="store_true", help="replace an existing SynthDrive dataset at OUT")
    p.add_argument("--preview", action="store_true", help="also write preview.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--benchmark", action="store_true", help="print rendering frames/s at 128x256 on one core and exit (no OUT)"
    )


def run(args: argparse.Namespace) -> int:
    from poodle.data.synthdrive import SynthDriveError, benchmark, generate_dataset

    if args.benchmark:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, like the docs' number
        fps = benchmark(resolution=(128, 256))
        print(f"SynthDrive rendering (frame + labels), 128x256, one core: {fps:.1f} frames/s")
        return 0
    if not args.out:
        raise UserError("missing OUT folder (usage: poodle synth OUT [--preset small|default] ...)")
    try:
        meta = generate_dataset(
            args.out,
            preset=args.preset,
            seed=args.seed,
            resolution=args.resolution,
            overwrite=args.overwrite,
            preview=args.preview,
            progress=not args.no_progress,
            train_videos=args.videos,
            val_videos=args.val_videos,
            train_images=args.images,
            val_images=args.val_images,
            seconds=args.seconds,
            fps=args.fps,
            flow_pairs=args.flow_pairs,
        )
    except SynthDriveError as e:
        raise UserError(str(e)) from None
    from pathlib import Path

    out = Path(args.out)
    c = meta["counts"]
    print((out / "stats.md").read_text())
    print(
        f"SynthDrive ({meta['preset']}, seed {meta['seed']}, {meta['resolution'][0]}x{meta['resolution'][1]}) in {out}:"
    )
    print(
        f"  videos/{{train,val}}/*.mov            {c['videos']['train']} + {c['videos']['val']} "
        f"x {c['frames_per_video']} frames @ {meta['fps']} fps"
    )
    print(f"  images/10k + labels/sem_seg          {c['images']['train']} + {c['images']['val']} labelled images")
    print(f"  flow/{{train,val}}.json + .flo         {c['flow_pairs']['train']} + {c['flow_pairs']['val']} pairs")
    print(f"  stats.md, meta.json{', preview.png' if args.preview else ''}")
    print(f"  rendering speed: {meta['frames_per_second']} frames/s")
    return 0
