"""`poodle demo`: the README's main job on the embedded synthetic default (no download, no GPU).

Today: generate a small SynthDrive dataset in the BDD100K layout, print its class statistics (spec Table 10
format) and write a preview grid. Pretraining and the linear readout join this pipeline as they land.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from poodle.cli import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--seed", type=int, default=0, help="world seed (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def run(args: argparse.Namespace) -> int:
    from poodle.data.synthdrive import generate_dataset

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UserError(f"{out} exists and is not empty; pass --overwrite to replace it")
    t0 = time.perf_counter()
    print(f"[1/1] SynthDrive: generating the 'small' preset into {out / 'synthdrive'}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    meta = generate_dataset(out / "synthdrive", preset="small", seed=args.seed, overwrite=True, preview=True)
    print(f"\nSynthDrive ready in {time.perf_counter() - t0:.1f} s: {meta['counts']}")
    print(f"  class statistics: {out / 'synthdrive' / 'stats.md'}")
    print(f"  preview:          {out / 'synthdrive' / 'preview.png'}")
    return 0
