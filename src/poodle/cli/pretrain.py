"""`poodle pretrain`: PooDLe pretraining on SynthDrive, BDD100K, Walking Tours, a folder of videos or shards.

Single process:   poodle pretrain --config synthdrive --out runs/sd
Multi-GPU/node:   torchrun --nproc_per_node 8 -m poodle pretrain --config poodle_bdd100k --out runs/bdd
                  (see docs/training.md for multi-node and SLURM)
"""

from __future__ import annotations

import argparse

from poodle.cli import UserError, flag_overrides


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="synthdrive", help="shipped config name or YAML path (default: synthdrive)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=1e-3")
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics.jsonl, tensorboard/)")
    p.add_argument("--data", help="dataset root (sets data.root)")
    p.add_argument("--dataset", choices=("bdd100k", "wt", "folder", "synthdrive", "shards"), help="sets data.dataset")
    p.add_argument("--flow", choices=("raft_large", "raft_small", "dis", "gt"), help="sets flow.source")
    p.add_argument("--steps", type=int, help="global step to stop at (a resumed run continues up to it)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="sets run.device")
    p.add_argument(
        "--resume", action=argparse.BooleanOptionalAction, default=True,
        help="resume from OUT/last.pt when it exists (default); --no-resume starts over",
    )  # fmt: skip


def resolve_config(args: argparse.Namespace):
    from poodle.config import load_config

    flags = (("data", "data.root"), ("dataset", "data.dataset"), ("flow", "flow.source"), ("device", "run.device"))
    overrides = flag_overrides(args, flags)
    return load_config(args.config, overrides)


def run(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from poodle.engine.checkpoint import CheckpointError
    from poodle.engine.distributed import shutdown_distributed
    from poodle.engine.pair_sources import build_pair_source
    from poodle.engine.train import TrainingError, pretrain

    cfg = resolve_config(args)
    if args.steps is not None and args.steps <= 0:
        raise UserError(f"--steps must be a positive step number, got {args.steps}")
    try:
        try:
            source, flow_estimator = build_pair_source(cfg)
        except (ValueError, FileNotFoundError) as e:
            raise UserError(str(e)) from e
        result = pretrain(cfg, args.out, source, flow_estimator, stop_step=args.steps, resume=args.resume)
    except (TrainingError, CheckpointError) as e:
        raise UserError(str(e)) from e
    is_main = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    shutdown_distributed()  # under torchrun: leave the process group cleanly; a no-op in a single process
    if is_main:
        print(f"done: step {result['step']}, checkpoint {result['checkpoint']}")
    return 0
