"""`poodle stats --dataset NAME --data ROOT [--split train] [--out FILE.md]`: spec Table 10 for any labelled dataset.

Prints per-class average pixel share per image, share of all pixels and share of images, and the Small/Large,
Rare/Common groups of decision 21 (Large: > 1 % average per-image pixel share; Common: present in > 20 % of images).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from poodle.cli import UserError

DATASETS = ("bdd100k", "cityscapes", "ade20k", "wtsem", "synthdrive", "folder")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, choices=DATASETS, help="dataset layout of --data")
    p.add_argument("--data", required=True, metavar="ROOT", help="dataset root folder")
    p.add_argument("--split", default="train", help="split to count (default: train, as decision 21 says)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N label maps (a quick look)")
    p.add_argument("--out", metavar="FILE", help="also write the report here (.md: Markdown; .json: numbers)")


def render_report(stats, dataset: str, split: str, root: str) -> str:
    """Markdown report: Table 10 layout, then the groups (and, for BDD100K, how they compare with Table 10)."""
    from poodle.data.classes import BDD100K_CLASSES
    from poodle.evaluation.groups import BDD100K_GROUPS, ClassGroups

    names = [r.name for r in stats.rows]
    groups = ClassGroups.from_stats(stats)
    lines = [
        f"## Class statistics: {dataset} {split} ({root})",
        "",
        f"{stats.images} label maps, {stats.pixels} pixels, {stats.ignore_pct:.2f} % ignored.",
        "",
        stats.to_markdown(),
        "",
        "Groups (Large: average pixel share per image > 1 %; Common: present in > 20 % of images):",
        "",
    ]
    for key, title in (("small", "Small"), ("large", "Large"), ("rare", "Rare"), ("common", "Common")):
        members = [names[i] for i in getattr(groups, key)]
        lines.append(f"- {title} ({len(members)}): {', '.join(members) or '-'}")
    if dataset == "bdd100k" and tuple(names) == BDD100K_CLASSES:
        same = groups == BDD100K_GROUPS
        lines += [
            "",
            "Evaluation uses the fixed Table 10 assignment for BDD100K (decision 21); "
            + ("these statistics give the same groups." if same else "these statistics give DIFFERENT groups."),
        ]
    return "\n".join(lines) + "\n"


def open_dataset(args: argparse.Namespace):
    """(segmentation dataset, root) from --dataset/--data/--split, with --limit checked; errors as UserError."""
    root = Path(args.data)
    if not root.exists():
        raise UserError(f"--data {root}: no such folder")
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be >= 1")
    from poodle.data.segmentation import build_segmentation_dataset

    try:
        return build_segmentation_dataset(args.dataset, str(root), args.split), root
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from e


def print_progress(done: int, total: int) -> None:
    """Progress of reading label maps, on stderr (stdout is the report), only on a terminal."""
    # BDD100K's 7,000 train masks take about a minute: show it is alive.
    if sys.stderr.isatty() and (done % 200 == 0 or done == total):
        print(f"\rreading label maps {done}/{total}", end="\n" if done == total else "", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    import json

    from poodle.evaluation.groups import ClassGroups, dataset_statistics

    ds, root = open_dataset(args)
    t0 = time.perf_counter()
    try:
        stats = dataset_statistics(ds, limit=args.limit, progress=print_progress)
    except ValueError as e:
        raise UserError(str(e)) from e
    report = render_report(stats, args.dataset, args.split, str(root))
    print(report, end="")
    print(f"({stats.images} label maps in {time.perf_counter() - t0:.1f} s)")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".json":
            d = stats.to_dict()
            d.update(dataset=args.dataset, split=args.split, root=str(root))
            d["group_indices"] = ClassGroups.from_stats(stats).to_dict()
            out.write_text(json.dumps(d, indent=2) + "\n")
        else:
            out.write_text(report)
        print(f"wrote {out}")
    return 0
