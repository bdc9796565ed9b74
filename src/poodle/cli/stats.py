"""`poodle stats --dataset NAME --data ROOT [--split train] [--out FILE.md]`: the paper's Table 10 for any dataset.

Prints per-class average pixel share per image (over the images containing the class, as Table 10), share of all
pixels and share of images, and the Small/Large, Rare/Common groups evaluation uses (Large: > 1 % average pixel
share; Common: present in > 20 % of images). Every mask is checked as the readout checks it (decodes, has its
image's size, holds only class ids or the ignore index): a bad one is a one-line error naming the file.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from poodle.cli import UserError

DATASETS = ("bdd100k", "cityscapes", "ade20k", "wtsem", "synthdrive", "folder")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, choices=DATASETS, help="dataset layout of --data")
    p.add_argument("--data", required=True, metavar="ROOT", help="dataset root folder")
    p.add_argument("--split", default="train", help="split to count (default: train, which the groups are defined on)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N label maps (a quick look)")
    p.add_argument("--out", metavar="FILE", help="also write the report here (.md: Markdown; .json: numbers)")
    p.add_argument(
        "--encoding",
        default="auto",
        choices=("auto", "zero_based", "one_based"),
        help="WT-Sem label encoding: 0-149, ADE-style 1-150 (0 = unlabelled), or read off the train masks",
    )
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), metavar="N",
                   help="processes reading the masks (default: min(4, CPUs); 0 = this process)")  # fmt: skip


def render_report(stats, dataset: str, split: str, root: str, note: str = "") -> str:
    """Markdown report: Table 10 layout, then the groups (and, for BDD100K, how they compare with Table 10)."""
    from poodle.data.classes import BDD100K_CLASSES
    from poodle.evaluation.groups import BDD100K_GROUPS, ClassGroups

    names = [r.name for r in stats.rows]
    groups = ClassGroups.from_stats(stats)
    lines = [
        f"## Class statistics: {dataset} {split} ({root})",
        "",
        f"{stats.images} label maps, {stats.pixels} pixels, {stats.ignore_pct:.2f} % ignored.",
        *([note] if note else []),
        "",
        stats.to_markdown(),
        "",
        "Groups (Large: average pixel share over the images containing the class > 1 %; Common: present in > 20 % "
        "of images):",
        "",
    ]
    for key, title in (("small", "Small"), ("large", "Large"), ("rare", "Rare"), ("common", "Common")):
        members = [names[i] for i in getattr(groups, key)]
        lines.append(f"- {title} ({len(members)}): {', '.join(members) or '-'}")
    if dataset == "bdd100k" and tuple(names) == BDD100K_CLASSES:
        same = groups == BDD100K_GROUPS
        lines += [
            "",
            "Evaluation uses the fixed Table 10 assignment for BDD100K (the paper's groups); "
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
        encoding = getattr(args, "encoding", "auto")
        return build_segmentation_dataset(args.dataset, str(root), args.split, encoding=encoding), root
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from e


def print_progress(done: int, total: int) -> None:
    """Progress of reading label maps, on stderr (stdout is the report), only on a terminal."""
    # BDD100K's 7,000 train masks take about a minute: show it is alive.
    if sys.stderr.isatty() and (done % 200 == 0 or done == total):
        print(f"\rreading label maps {done}/{total}", end="\n" if done == total else "", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    import json

    from poodle.data.class_stats import class_statistics_from_histograms
    from poodle.data.segmentation import check_segmentation_data
    from poodle.evaluation.groups import ClassGroups

    root = Path(args.data)
    if not root.exists():
        raise UserError(f"--data {root}: no such folder")
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be >= 1")
    t0 = time.perf_counter()
    try:
        # The readout's own check: label files only, each decoded once, sizes from the image headers.
        check = check_segmentation_data(args.dataset, str(root), (args.split,), args.encoding,
                                        workers=max(0, args.workers), progress=sys.stderr.isatty(),
                                        limit=args.limit)  # fmt: skip
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from e
    info = check.info
    stats = class_statistics_from_histograms(check.histograms[args.split], check.sizes[args.split], info.classes,
                                             info.ignore_index)  # fmt: skip
    note = f"Label encoding: {info.label_encoding} ({info.encoding_note})." if info.label_encoding else ""
    report = render_report(stats, args.dataset, args.split, str(root), note)
    print(report, end="")
    print(f"({stats.images} label maps checked and counted in {time.perf_counter() - t0:.1f} s)")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".json":
            d = stats.to_dict()
            d.update(dataset=args.dataset, split=args.split, root=str(root), data_check=check.to_dict())
            d["group_indices"] = ClassGroups.from_stats(stats).to_dict()
            out.write_text(json.dumps(d, indent=2) + "\n")
        else:
            out.write_text(report)
        print(f"wrote {out}")
    return 0
