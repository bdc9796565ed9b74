"""`poodle analyze subcrops --dataset NAME --data ROOT [--split train] [--limit N] [--out DIR]`
`poodle analyze alignment --shards DIR [--weights RUN|PTH|random --arch A] [--pairs N] [--out DIR]`.

subcrops: subcrop-hit probability vs pixel probability of the foreground classes (PooDLe paper, App. C, Fig. 10b):
per image 2 global crops (area ~U[0.16, 0.45]), 4096 subcrops each (area ~U[0.02, 0.03] of the crop); a subcrop is
"hit" by an object when the object covers >= --threshold of it. Prints a Markdown table over 10 quantile bins of
object size and writes subcrop_hits.json and subcrop_hits.png into --out.

alignment: on frame pairs of a prepared shards folder (`poodle prepare`), cosine similarity between frame a and
frame b sampled where the flow says a's content went, at the same place, and at random places
(`poodle.evaluation.feature_alignment`): for the raw pixels and 5x5 patches (a check of the flow and the warp that
needs no model) and, with --weights, for a backbone's readout features (does it follow the flow?).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from poodle.cli import UserError

DATASETS = ("bdd100k", "cityscapes", "ade20k", "wtsem", "synthdrive", "folder")
ANALYSES = ("subcrops", "alignment")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("analysis", choices=ANALYSES, help="subcrops (the paper's App. C) or alignment (features vs flow)")
    p.add_argument("--dataset", choices=DATASETS, help="subcrops: dataset layout of --data")
    p.add_argument("--data", metavar="ROOT", help="subcrops: dataset root folder")
    p.add_argument("--shards", metavar="DIR", help="alignment: prepared shards folder (pairs with their flow)")
    p.add_argument("--weights", help="alignment: backbone (poodle run/checkpoint, torchvision .pth, random)")
    p.add_argument("--arch", help="alignment: arch for --weights random (resnet18/34/50)")
    p.add_argument("--pairs", type=int, default=16, help="alignment: pairs to average over (default 16)")
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
    p.add_argument("--out", metavar="DIR", help="write the results (JSON, and the subcrops plot) here")


def run(args: argparse.Namespace) -> int:
    if args.analysis == "alignment":
        return run_alignment(args)
    if not args.dataset or not args.data:
        raise UserError("analyze subcrops needs --dataset and --data")
    return run_subcrops(args)


def run_alignment(args: argparse.Namespace) -> int:
    import torch

    from poodle.data.shards import ShardError
    from poodle.evaluation.backbones import BackboneError, load_backbone
    from poodle.evaluation.feature_alignment import (
        backbone_feature_fn,
        dense_head_alignment,
        feature_alignment,
        patch_features,
        pixel_features,
        shard_pairs,
    )

    if not args.shards:
        raise UserError("analyze alignment needs --shards DIR (a folder written by `poodle prepare`)")
    if args.pairs < 1:
        raise UserError("--pairs must be >= 1")
    try:
        batch = shard_pairs(args.shards, args.pairs)
    except ShardError as e:
        raise UserError(str(e)) from e
    inputs = (batch["frame_a"], batch["frame_b"], batch["flow_ab"], batch["flow_ba"])
    rows = [("pixels (RGB)", feature_alignment(pixel_features, *inputs)),
            ("5x5 patches", feature_alignment(patch_features, *inputs))]  # fmt: skip
    if args.weights:
        torch.manual_seed(args.seed)
        try:
            backbone = load_backbone(args.weights, arch=args.arch, dilated=True if args.weights == "random" else None)
        except BackboneError as e:
            raise UserError(str(e)) from e
        fn, name = backbone_feature_fn(backbone)
        with torch.no_grad():
            rows.append((f"{backbone.arch} {name} features ({args.weights})", feature_alignment(fn, *inputs)))
        if backbone.source == "poodle":
            from poodle.engine.export import load_networks

            networks, _ = load_networks(args.weights)
            if getattr(networks, "dense_projector", None) is not None:
                rows.append(("dense head (online prediction vs target projection)",
                             dense_head_alignment(networks, *inputs)))  # fmt: skip
    n = rows[0][1].pairs
    print(f"## Flow alignment: {n} pairs of {args.shards}\n")
    print("cos(a(p), b(q)) averaged over valid pixels p (in frame, not occluded); q = p + flow (warped), p (same "
          "place) or random (shuffled); 'moving' = pixels moving >= 1 pixel of that map.\n")  # fmt: skip
    print("| Map | Warped | Same place | Shuffled | Warped, moving | Same place, moving | Moving share | Mean motion |")
    print("|---|---|---|---|---|---|---|---|")
    for label, r in rows:
        print(f"| {label} | {r.warped:.3f} | {r.same_place:.3f} | {r.shuffled:.3f} | {r.warped_moving:.3f} | "
              f"{r.same_place_moving:.3f} | {r.moving_fraction:.2f} | {r.mean_motion_px:.2f} px |")  # fmt: skip
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        data = {"shards": str(args.shards), "weights": args.weights, "rows": {k: r.to_dict() for k, r in rows}}
        (out / "alignment.json").write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {out / 'alignment.json'}")
    return 0


def run_subcrops(args: argparse.Namespace) -> int:
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
    from poodle.data.segmentation import check_segmentation_data

    try:  # the readout's mask check first: a bad file is one line naming it, before any analysis
        check_segmentation_data(args.dataset, str(root), (args.split,), getattr(args, "encoding", "auto"),
                                progress=sys.stderr.isatty(), limit=n)  # fmt: skip
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from e
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
