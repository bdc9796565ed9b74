"""`poodle eval detection`: Faster R-CNN (C4 or FPN) readout of a frozen backbone, with COCO mAP and a figure.

    poodle eval detection --head fpn --dataset synthdrive --data demo_out/synthdrive --weights demo_out/pretrain \\
        --out det_fpn
    poodle eval detection --head c4 --dataset bdd100k --data /datasets/bdd100k --weights runs/bdd --out det_c4
    torchrun --nproc_per_node 8 -m poodle eval detection --head fpn --dataset bdd100k --data /datasets/bdd100k \\
        --weights imagenet:resnet50.pth --out det_in1k_fpn

The recipe is `detection_bdd100k` (FlowE's schedule: 12 epochs, batch 16, lr 0.02, x0.1 at epochs 8 and 11,
720x1280) or, for SynthDrive, `detection_synthdrive_cpu`; `--config` picks another, `key=value` overrides any key
(`c4_train_res5=true`, `steps=200`). Train and val labels are checked before anything is trained. OUT/last.pt is
written every `checkpoint_every` steps and resumed on the next run with the same recipe (`--no-resume` starts over).
Writes results.json, table.md, coco_eval.txt, detector.pt and figures/detections.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from poodle.cli import UserError, add_override_arguments, add_weights_arguments

DATASETS = ("bdd100k", "synthdrive")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--head", required=True, choices=("c4", "fpn"), help="Faster R-CNN variant: ResNet-C4 or FPN")
    p.add_argument("--dataset", required=True, choices=DATASETS,
                   help="dataset (both read the BDD100K det_20 layout; SynthDrive writes it too)")  # fmt: skip
    p.add_argument("--data", required=True, help="dataset root")
    add_weights_arguments(p)
    p.add_argument("--out", required=True, help="output folder (results.json, table.md, last.pt, figures/)")
    p.add_argument("--steps", type=int, help="override the recipe's number of training steps")
    p.add_argument("--config", help="detection recipe name or YAML (default: detection_<dataset>[_cpu])")
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT/last.pt exists")
    p.add_argument("--no-progress", action="store_true", help="periodic log lines instead of a progress bar")
    add_override_arguments(p, "c4_train_res5=true lr=0.01", "steps=100")


def run(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from poodle.data.detection import DetectionDataError
    from poodle.engine.checkpoint import CheckpointError
    from poodle.engine.distributed import shutdown_distributed
    from poodle.evaluation.backbones import BackboneError
    from poodle.evaluation.detection import DetectionError, run_detection
    from poodle.evaluation.detection_config import default_config_name, load_detection_config
    from poodle.evaluation.readout import ReadoutError

    name = args.config or default_config_name(args.dataset)
    cfg = load_detection_config(name, [f"head={args.head}", *args.overrides, *args.set_overrides])
    if cfg.head != args.head:
        raise UserError(f"the overrides set head={cfg.head} but --head {args.head} was asked")
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    label = args.name or Path(str(args.weights).removeprefix("imagenet:")).name
    weights = args.weights if args.branch == "auto" else f"{args.branch}:{args.weights}"
    try:
        results = run_detection(weights, args.dataset, args.data, cfg, args.out, steps=args.steps, arch=args.arch,
                                method={"name": label}, progress=not args.no_progress,
                                resume=not args.no_resume)  # fmt: skip
    except (BackboneError, CheckpointError, DetectionDataError, DetectionError, ReadoutError, FileNotFoundError) as e:
        raise UserError(str(e)) from e
    is_main = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    shutdown_distributed()
    if not is_main or results.get("interrupted") is not None:
        return 0  # interrupted: the loop said which step it saved; the same command resumes
    from poodle.evaluation.tables import coco_table, table1

    m = results["metrics"]
    print(f"\n{table1(results, [label])}\n\n{coco_table(results, [label])}\n")
    print(f"{m['num_images']} val images, {m['num_detections']} detections")
    out = Path(args.out)
    print(f"results: {out / 'results.json'}\ntables:  {out / 'table.md'}")
    for fig, path in (results.get("figures") or {}).items():
        print(f"figure {fig}: {path}")
    return 0
