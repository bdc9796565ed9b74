"""`poodle flow train`: train an optical-flow network (torchvision RAFT) on your own frame pairs, without labels.

    poodle flow train --dataset synthdrive --out runs/flow_sd        # CPU smoke recipe (12-23 min on 2 cores)
    poodle flow train --config flow_train_video_gpu --dataset folder --data /videos --out runs/flow
    torchrun --nproc_per_node 4 -m poodle flow train --config flow_train_video_gpu --data /bdd --dataset bdd100k

UFlow/SMURF losses: census photometric loss, edge-aware smoothness, forward-backward occlusion masking, a loss on
every RAFT update, optional self-supervision. The model is OUT/flow_model.pt (a torchvision RAFT state dict); use it
as a flow source with `flow.source=raft_small flow.weights=OUT/flow_model.pt` (pretrain, prepare), and measure it
with `poodle flow --benchmark-synthdrive --trained OUT`. See docs/flow.md: at CPU scale the model does not yet
learn beyond zero flow.
"""

from __future__ import annotations

import argparse

from poodle.cli import UserError, flag_overrides


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", default="flow_train_synthdrive_cpu",
        help="shipped recipe name or YAML path (default: flow_train_synthdrive_cpu; GPU: flow_train_video_gpu)",
    )  # fmt: skip
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=1e-4")
    p.add_argument("--out", required=True, help="run folder (flow_model.pt, last.pt, metrics.jsonl, tensorboard/)")
    p.add_argument("--data", help="dataset root (sets data.root)")
    p.add_argument("--dataset", choices=("bdd100k", "wt", "folder", "synthdrive", "shards"), help="sets data.dataset")
    p.add_argument("--steps", type=int, help="step to stop at (default: optim.steps; a resumed run continues to it)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="sets run.device")
    p.add_argument("--size", choices=("small", "large"), help="RAFT size (sets model.size; default small)")
    p.add_argument(
        "--resume", action=argparse.BooleanOptionalAction, default=True,
        help="resume from OUT/last.pt when it exists (default); --no-resume starts over",
    )  # fmt: skip


def resolve_config(args: argparse.Namespace):
    from poodle.flowtrain.config import load_flow_train_config

    flags = (("data", "data.root"), ("dataset", "data.dataset"), ("device", "run.device"), ("size", "model.size"))
    overrides = flag_overrides(args, flags)
    return load_flow_train_config(args.config, overrides)


def run(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from poodle.data.optical_flow import FlowWeightsError
    from poodle.engine.checkpoint import CheckpointError
    from poodle.engine.distributed import shutdown_distributed
    from poodle.engine.train import TrainingError
    from poodle.flowtrain.train import build_flow_pair_source, train_flow

    cfg = resolve_config(args)
    if args.steps is not None and args.steps <= 0:
        raise UserError(f"--steps must be a positive step number, got {args.steps}")
    if cfg.data.dataset != "synthdrive" and not cfg.data.root:
        raise UserError(f"data.dataset={cfg.data.dataset} needs --data ROOT")
    try:
        try:
            source = build_flow_pair_source(cfg)
        except (ValueError, FileNotFoundError) as e:
            raise UserError(str(e)) from e
        result = train_flow(cfg, args.out, source, stop_step=args.steps, resume=args.resume)
    except (TrainingError, CheckpointError, FlowWeightsError) as e:
        raise UserError(str(e)) from e
    is_main = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    shutdown_distributed()
    if is_main:
        state = "interrupted at" if result["interrupted"] is not None else "done:"
        print(f"{state} step {result['step']}; flow model {result['model']}\n"
              f"use it with: flow.source=raft_{cfg.model.size} flow.weights={result['model']}")  # fmt: skip
    return 0
