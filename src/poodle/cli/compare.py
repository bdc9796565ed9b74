"""`poodle compare RESULT_DIR_OR_JSON ... [--labels a,b,c] [--per-class]`: several evaluations side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

from poodle.cli import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", metavar="RESULT", help="results.json files or folders holding one")
    p.add_argument("--labels", help="comma-separated row labels, one per result (default: method name or folder)")
    p.add_argument("--per-class", action="store_true", help="also print per-class IoU (Table 9 layout)")
    p.add_argument("--out", metavar="FILE.md", help="also write the tables to this Markdown file")


def run(args: argparse.Namespace) -> int:
    from poodle.evaluation.tables import compare_table, read_results, results_path

    results, fallback = [], []
    for item in args.results:
        try:
            results.append(read_results(item))
        except (FileNotFoundError, ValueError) as e:
            raise UserError(str(e)) from e
        p = results_path(item)
        fallback.append(p.parent.name if p.name == "results.json" else p.stem)
    if args.labels is not None:
        labels = [s.strip() for s in args.labels.split(",")]
        if len(labels) != len(results):
            raise UserError(f"--labels has {len(labels)} labels for {len(results)} results")
    else:
        labels = [(r.get("method") or {}).get("name") or fb for r, fb in zip(results, fallback)]
    text = compare_table(results, labels, per_class=args.per_class)
    print(text, end="")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0
