"""`poodle eval linear|upernet`: segmentation readout of a backbone with class-group mIoU, tables and figures.

    poodle eval linear --dataset synthdrive --data demo_out/synthdrive --weights demo_out/pretrain --out ro
    poodle eval linear --dataset bdd100k --data /datasets/bdd100k --weights imagenet:r50.pth --arch resnet50 --out ro
    poodle eval upernet --dataset ade20k --data /datasets/ade --weights backbone.pth --out ro --set steps=80000

The recipe is `readout_<dataset>` (linear) or `upernet_<dataset>` (shipped configs; `--config` picks another,
e.g. `readout_synthdrive_cpu`), with `key=value` overrides. Under torchrun every rank trains its share.

Every train and val mask is checked before anything is trained; a bad one is a one-line error naming the file.
WT-Sem's label encoding is read off its train masks (`label_encoding=zero_based|one_based` sets it);
`recompute_bn=N` recomputes the frozen backbone's BatchNorm statistics on N train images first (default off).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from poodle.cli import UserError, add_override_arguments, add_weights_arguments

DATASETS = ("bdd100k", "cityscapes", "ade20k", "wtsem", "synthdrive", "folder")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("head", choices=("linear", "upernet"),
                   help="readout head (`poodle eval detection --help` for the detection readout)")  # fmt: skip
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--dataset", required=True, choices=DATASETS, help="dataset layout")
    add_weights_arguments(p)
    p.add_argument("--out", required=True, help="output folder (results.json, table.md, head.pt, figures/)")
    p.add_argument("--steps", type=int, help="override the recipe's number of steps")
    p.add_argument("--config", help="readout recipe name or YAML (default: readout_/upernet_<dataset>)")
    p.add_argument("--no-progress", action="store_true", help="periodic log lines instead of a progress bar")
    add_override_arguments(p, "lr=0.01 inference=slide", "lr=0.01 steps=100")


def run(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from poodle.config import shipped_configs
    from poodle.data.segmentation import SegDatasetError
    from poodle.engine.checkpoint import CheckpointError
    from poodle.engine.distributed import shutdown_distributed
    from poodle.evaluation.backbones import BackboneError
    from poodle.evaluation.config import default_config_name, load_readout_config
    from poodle.evaluation.readout import ReadoutError, run_readout
    from poodle.evaluation.tables import table1, table3_rows

    name = args.config or default_config_name(args.head, args.dataset)
    if args.config is None and name not in shipped_configs("readout"):
        raise UserError(f"no shipped recipe {name!r}; pass --config (shipped: {', '.join(shipped_configs('readout'))})")
    overrides = [*args.overrides, *args.set_overrides]
    if args.config is None or args.head == "upernet":
        overrides.insert(0, f"head={args.head}")
    cfg = load_readout_config(name, overrides)
    if cfg.head != args.head:
        raise UserError(f"the recipe {name!r} is a {cfg.head} readout but `poodle eval {args.head}` was asked")
    label = args.name or Path(str(args.weights).removeprefix("imagenet:")).name
    try:
        weights = args.weights if args.branch == "auto" else f"{args.branch}:{args.weights}"
        results = run_readout(weights, args.dataset, args.data, cfg, args.out, steps=args.steps, arch=args.arch,
                              method={"name": label}, progress=not args.no_progress)  # fmt: skip
    except (BackboneError, CheckpointError, SegDatasetError, ReadoutError, FileNotFoundError) as e:
        raise UserError(str(e)) from e
    is_main = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    shutdown_distributed()  # under torchrun: leave the process group cleanly; a no-op in a single process
    if not is_main:
        return 0
    print("\n" + table1(results, [label]) + "\n\n" + table3_rows(results, [label]) + "\n")
    print(f"results: {Path(args.out) / 'results.json'}\ntables:  {Path(args.out) / 'table.md'}")
    for fig, path in (results.get("figures") or {}).items():
        print(f"figure {fig}: {path}")
    return 0
