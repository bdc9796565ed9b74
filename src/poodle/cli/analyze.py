"""`poodle analyze subcrops --dataset NAME --data ROOT [--split train] [--limit N] [--out DIR]`.

Subcrop-hit probability vs pixel probability of the foreground classes (spec §1.3, App. C, Fig. 10b): per image
2 global crops (area ~U[0.16, 0.45]), 4096 subcrops each (area ~U[0.02, 0.03] of the crop); a subcrop is "hit" by
an object when the object covers >= --threshold of it. Prints a Markdown table over 10 quantile bins of object size
and writes subcrop_hits.json and subcrop_hits.png into --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from poodle.cli import UserError

DATASETS = ("bdd100k", "cityscapes", "ade20k", "wtsem", "synthdrive", "folder")
ANALYSES = ("subcrops",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("analysis", choices=ANALYSES, help="which analysis (subcrops: spec App. C)")
    p.add_argument("--dataset", required=True, choices=DATASETS, help="dataset layout of --data")
    p.add_argument("--data", required=True, metavar="ROOT", help="dataset root folder")
    p.add_argument("--split", default="train", help="split to read (default: train, as App. C)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N label maps (a quick look)")
    p.add_argument("--threshold", type=float, default=0.05, help="hit if the object covers >= this (default 0.05)")
    p.add_argument("--subcrops", type=int, default=4096, metavar="N", help="subcrops per global crop (default 4096)")
    p.add_argument("--bins", type=int, default=10, help="quantile bins of object size (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the crops (default 0)")
    p.add_argument(
        "--foreground",
        metavar="NAMES",
        help="comma-separated foreground class names (default: App. C's pole, traffic light, ..., bicycle)",
    )
    p.add_argument("--out", metavar="DIR", help="write subcrop_hits.json and subcrop_hits.png here")


def run(args: argparse.Namespace) -> int:
    from poodle.cli.stats import open_dataset, print_progress
    from poodle.evaluation.groups import label_maps
    from poodle.evaluation.subcrop_hits import PAPER_FOREGROUND, foreground_indices, hit_plot, subcrop_hit_analysis

    if not 0.0 < args.threshold <= 1.0:
        raise UserError("--threshold must be in (0, 1]")
    if args.subcrops < 1 or args.bins < 1:
        raise UserError("--subcrops and --bins must be >= 1")
    ds, root = open_dataset(args)
    classes = list(ds.info.classes)
    wanted = [s.strip() for s in args.foreground.split(",") if s.strip()] if args.foreground else PAPER_FOREGROUND
    fg = foreground_indices(classes, wanted)
    if not fg:
        raise UserError(f"none of the foreground classes {list(wanted)} is among the dataset's classes {classes}")
    n = len(ds) if args.limit is None else min(args.limit, len(ds))
    if n == 0:
        raise UserError("the dataset is empty")
    t0 = time.perf_counter()
    result = subcrop_hit_analysis(
        label_maps(ds, n, print_progress),
        classes,
        fg,
        subcrops_per_crop=args.subcrops,
        threshold=args.threshold,
        bins=args.bins,
        seed=args.seed,
    )
    if not result.bins:
        raise UserError("no foreground class appears in any global crop")
    print(f"## Subcrop hits vs pixels: {args.dataset} {args.split} ({root})")
    print()
    print(
        f"{result.images} label maps, {result.pairs} (global crop, foreground class) pairs; hit = object covers "
        f">= {100 * args.threshold:g} % of a subcrop; foreground: {', '.join(result.foreground)}."
    )
    print()
    print(result.to_markdown())
    print(f"({time.perf_counter() - t0:.1f} s)")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        d = result.to_dict()
        d.update(dataset=args.dataset, split=args.split, root=str(root))
        (out / "subcrop_hits.json").write_text(json.dumps(d, indent=2) + "\n")
        hit_plot(result, f"subcrop hit vs pixel probability: {args.dataset} {args.split}").save(
            out / "subcrop_hits.png"
        )
        print(f"wrote {out / 'subcrop_hits.json'} and {out / 'subcrop_hits.png'}")
    return 0
