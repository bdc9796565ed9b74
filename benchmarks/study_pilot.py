"""Pilot for sizing a SynthDrive study: usable dense-loss pixels and subcrop fallbacks by frame gap and ego speed.

    PYTHONPATH=src python benchmarks/study_pilot.py [--sequences 24] [--resolution 128x256] [--dt 4 8 15 30]
        [--seed 0] [--draws 4] [--behind zero|out] [--json OUT]

For each SynthDrive sequence (world seed --seed, indices 0 .. --sequences - 1) one start frame t is drawn from a
generator seeded with --seed, uniformly in [0, 300 - max dt), and shared by every dt, so the columns compare the
same scenes; each dt then uses frames t and t + dt (30 fps). Flow and occlusion are SynthDrive's exact ones, in
both directions (t -> t + dt and back), as the training batch uses both orderings.

* valid %: share of pixels the dense loss can use: visible in the other frame (`seq.occlusion` False) and whose
  flow target lies inside it (`poodle.data.flow.in_bounds_mask`), averaged over the two directions. Points that
  pass behind the camera are occluded, so they never count as valid.
* fallback %: share of subcrop pairs for which `flow_aware_subcrops` (default `SubcropConfig`: K = 6, area
  [0.05, 0.3], jitter 0.10, 5 tries, clamp inside) found no paired centre in bounds and fell back to a same-frame
  pair; over --draws sampler draws (generator seeds 0 .. draws - 1, as in subcrop_clamp.py) and both directions.
  SynthDrive gives a flow of 0 to points that pass behind the camera, and a centre there is always accepted:
  --behind zero (default) keeps that, as training on SynthDrive sees it; --behind out gives those points a flow
  out of the frame, as for real flow (their content has left the view). At large dt many pixels pass behind the
  camera (about 19 % of the moving sequences' pixels at dt 30 in the default run), so "zero" then reports far
  fewer fallbacks than "out".

Rows group the sequences by the scenario's ego speed (`seq.scene.camera.speed`, m/s): stopped (0), slow [5, 9.5),
fast [9.5, 14]; n is the number of sequences in the row, "all" pools every sequence. Cells are means over the
row's sequences (each sequence weighs the same). --json OUT also writes the per-sequence numbers and the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from poodle.cli.synth import _resolution
from poodle.config import SubcropConfig
from poodle.data.class_stats import class_statistics
from poodle.data.classes import BDD100K_CLASSES
from poodle.data.flow import in_bounds_mask
from poodle.data.synthdrive import SynthDriveError, SynthDriveSequence, check_resolution

sys.path.insert(0, str(Path(__file__).resolve().parent))
from subcrop_clamp import behind_camera, clamp_stats, send_out_of_frame  # noqa: E402

FRAMES = 300  # start frames and targets stay below this (SynthDrive sequences are longer: 12 s at 30 fps)
SPEED_BINS = (("stopped", 0.0, 0.0), ("slow", 5.0, 9.5), ("fast", 9.5, 14.0))  # name, [lo, hi) m/s; stopped: == 0


def speed_bin(speed: float) -> str:
    """The row of an ego speed in m/s: stopped (0), slow [5, 9.5), fast [9.5, 14] (the scenario draws U[5, 14])."""
    if speed == 0.0:
        return "stopped"
    return "slow" if speed < SPEED_BINS[1][2] else "fast"


def pair_stats(
    seq: SynthDriveSequence, t: int, dt: int, cfg: SubcropConfig, draws: int, behind: str = "zero"
) -> dict[str, float]:
    """Valid share per direction and their mean, and the same-frame fallback share, for frames t and t + dt.

    behind: "zero" samples subcrops from SynthDrive's flow as is, "out" first moves points behind the camera
    out of the frame."""
    flows, valid = [], []
    for a, b in ((t, t + dt), (t + dt, t)):
        flow = torch.from_numpy(seq.flow(a, b)).permute(2, 0, 1)[None]
        occluded = torch.from_numpy(seq.occlusion(a, b))
        valid.append(float((~occluded & in_bounds_mask(flow)[0, 0]).float().mean()))
        if behind == "out":
            flow = send_out_of_frame(flow, behind_camera(flow, occluded))
        flows.append(flow)
    fallback = clamp_stats(torch.cat(flows), cfg, draws)["fallback"]
    return {"valid_fw": valid[0], "valid_bw": valid[1], "valid": (valid[0] + valid[1]) / 2, "fallback": fallback}


def measure(
    sequences: int, hw: tuple[int, int], dts: list[int], seed: int = 0, draws: int = 4, behind: str = "zero"
) -> list[dict[str, object]]:
    """One record per sequence: index, start frame t, ego speed, speed bin and `pair_stats` per dt."""
    g = torch.Generator().manual_seed(seed)
    cfg = SubcropConfig()
    records = []
    for i in range(sequences):
        seq = SynthDriveSequence(seed=seed, index=i, resolution=hw)
        t = int(torch.randint(0, FRAMES - max(dts), (1,), generator=g))
        speed = float(seq.scene.camera.speed)
        per_dt = {dt: pair_stats(seq, t, dt, cfg, draws, behind) for dt in dts}
        records.append({"index": i, "t": t, "speed": speed, "bin": speed_bin(speed), "dt": per_dt})
    return records


def summarise(records: list[dict[str, object]], dts: list[int]) -> list[dict[str, object]]:
    """Table rows (each speed bin, then "all"): n and, per dt, the mean valid and fallback shares (None if n = 0)."""
    rows = []
    for name in [b[0] for b in SPEED_BINS] + ["all"]:
        group = [r for r in records if name in ("all", r["bin"])]
        cells = {}
        for dt in dts:
            if group:
                cells[dt] = {k: float(np.mean([r["dt"][dt][k] for r in group])) for k in ("valid", "fallback")}
            else:
                cells[dt] = None
        rows.append({"bin": name, "n": len(group), "cells": cells})
    return rows


def markdown(rows: list[dict[str, object]], dts: list[int]) -> str:
    labels = {"stopped": "stopped (0 m/s)", "slow": "slow (5-9.5 m/s)", "fast": "fast (9.5-14 m/s)", "all": "all"}
    lines = ["| ego speed | n | " + " | ".join(f"dt {dt}: valid % / fallback %" for dt in dts) + " |"]
    lines.append("|---|---:|" + "---:|" * len(dts))
    for row in rows:
        cells = [
            "-" if c is None else f"{100 * c['valid']:.1f} / {100 * c['fallback']:.1f}"
            for c in (row["cells"][dt] for dt in dts)
        ]
        lines.append(f"| {labels[row['bin']]} | {row['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


CELL_RESOLUTIONS = ((64, 128), (128, 256), (256, 512), (512, 1024))


def small_class_cells(sequences: int, hw: tuple[int, int], seed: int = 0, frames: tuple[int, ...] = (0, 150)):
    """Table 10-style statistics of the label maps of `frames` of each sequence, and per Small class the mean number of
    stride-8 feature cells it covers in an image that contains it, at each of CELL_RESOLUTIONS (the share of the
    image is measured at `hw`; cells = share x H x W / 64)."""
    labels = [SynthDriveSequence(seed=seed, index=i, resolution=hw).labels(t) for i in range(sequences) for t in frames]
    stats = class_statistics(labels, BDD100K_CLASSES)
    rows = [r for r in stats.sorted_rows() if r.size == "S" and r.image_pct > 0]
    return stats, [
        {"class": r.name, "avg_pixel_pct": r.avg_pixel_pct, "image_pct": r.image_pct,
         "cells": {f"{h}x{w}": r.avg_pixel_pct / 100 * h * w / 64 for h, w in CELL_RESOLUTIONS}}
        for r in rows
    ]  # fmt: skip


def cells_markdown(rows: list[dict[str, object]]) -> str:
    res = [f"{h}x{w}" for h, w in CELL_RESOLUTIONS]
    lines = [
        "| Small class | % of image where present | % of images | " + " | ".join(f"cells at {r}" for r in res) + " |"
    ]
    lines.append("|---|---:|---:|" + "---:|" * len(res))
    for r in rows:
        cells = " | ".join(f"{r['cells'][k]:.1f}" for k in res)
        lines.append(f"| {r['class']} | {r['avg_pixel_pct']:.2f} | {r['image_pct']:.0f} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequences", type=int, default=24, help="SynthDrive sequences (indices 0..N-1)")
    ap.add_argument("--resolution", type=_resolution, default=(128, 256), metavar="HxW")
    ap.add_argument("--dt", type=int, nargs="+", default=[4, 8, 15, 30], help="frame gaps at 30 fps")
    ap.add_argument("--seed", type=int, default=0, help="SynthDrive world seed and start-frame generator seed")
    ap.add_argument("--draws", type=int, default=4, help="sampler draws per pair (generator seeds 0..draws-1)")
    ap.add_argument(
        "--behind", choices=("zero", "out"), default="zero", help="flow given to the sampler behind the camera"
    )
    ap.add_argument("--json", metavar="OUT", help="also write per-sequence numbers and the table as JSON")
    args = ap.parse_args(argv)
    try:
        hw = check_resolution(args.resolution)
    except SynthDriveError as e:
        ap.error(f"--resolution: {e}")
    if args.sequences < 1 or args.draws < 1:
        ap.error("--sequences and --draws must be at least 1")
    dts = sorted(set(args.dt))
    if dts[0] < 0 or dts[-1] >= FRAMES:
        ap.error(f"--dt must lie in [0, {FRAMES - 1}], got {args.dt}")

    if args.json:  # checked before the measurement, not after it
        parent = Path(args.json).resolve().parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            ap.error(f"--json {args.json}: folder {parent} does not exist or is not writable")

    start = time.perf_counter()
    records = measure(args.sequences, hw, dts, args.seed, args.draws, args.behind)
    rows = summarise(records, dts)
    print(
        f"SynthDrive seed {args.seed}, {args.sequences} sequences at {hw[0]}x{hw[1]}, frames t and t + dt "
        f"(t ~ U[0, {FRAMES - max(dts)}) per sequence), both directions; default subcrops, {args.draws} draws, "
        f"behind-camera flow {args.behind}\n"
    )
    print(markdown(rows, dts))
    stats, cells = small_class_cells(args.sequences, hw, args.seed)
    print(
        f"\nSmall classes (Table 10 rule on the labels of frames 0 and 150 of each sequence, {stats.images} images): "
        "their mean share of an image that contains them, and the stride-8 feature cells that share covers\n"
    )
    print(cells_markdown(cells))
    seconds = time.perf_counter() - start
    print(f"\n{seconds:.1f} s")
    if args.json:
        report = {
            "seed": args.seed,
            "resolution": list(hw),
            "dts": dts,
            "draws": args.draws,
            "behind": args.behind,
            "sequences": [{**r, "dt": {str(k): v for k, v in r["dt"].items()}} for r in records],
            "table": [{**row, "cells": {str(k): v for k, v in row["cells"].items()}} for row in rows],
            "small_class_cells": cells,
            "seconds": seconds,
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
