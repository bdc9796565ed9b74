"""`poodle prepare`: sample frame pairs as training does, compute their flow once, write WebDataset shards.

    poodle prepare --config poodle_bdd100k --data /data/bdd100k --flow raft_large --out /data/bdd-shards \
        --pairs 1000000 --device cuda
    poodle pretrain --config poodle_bdd100k --dataset shards --data /data/bdd-shards --out runs/bdd

Training from the shards must use the same data.resolution and data.repeat (the reader checks both).
"""

from __future__ import annotations

import argparse

from poodle.cli import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="synthdrive", help="shipped config name or YAML path (default: synthdrive)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.resolution=[256,512]")
    p.add_argument("--data", help="dataset root (sets data.root)")
    p.add_argument("--dataset", choices=("bdd100k", "wt", "folder", "synthdrive"), help="sets data.dataset")
    p.add_argument("--flow", choices=("raft_large", "raft_small", "dis", "gt"), help="sets flow.source")
    p.add_argument("--out", required=True, help="shards folder to create (shard-NNNNNN.tar, index.json, prepare.json)")
    p.add_argument("--pairs", type=int, required=True, help="pairs to write (rounded up to whole data.repeat groups)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing shards folder at --out")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where RAFT runs (default: auto)")
    p.add_argument("--shard-size-mb", type=float, default=1024, help="target size of one tar shard (default: 1024)")
    p.add_argument("--workers", type=int, help="DataLoader workers decoding videos (default: data.workers)")
    p.add_argument("--flow-batch", type=int, default=16, help="pairs per flow-estimator call (default: 16)")
    p.add_argument(
        "--frame-format", choices=("png", "jpg"), default="png",
        help="png: lossless (default); jpg: quality 95, ~3-4x smaller, frames no longer bit-exact",
    )  # fmt: skip
    p.add_argument("--seed", type=int, help="sampling seed (default: run.seed)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import torch

    from poodle.config import load_config
    from poodle.data.pairs import PairDataError
    from poodle.data.shards import prepare_shards

    overrides = list(args.overrides)
    for flag, key in (("data", "data.root"), ("dataset", "data.dataset"), ("flow", "flow.source")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = load_config(args.config, overrides)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available; use --device cpu")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        report = prepare_shards(
            cfg, args.out, args.pairs,
            shard_size_mb=args.shard_size_mb, workers=args.workers, progress=None if not args.no_progress else False,
            seed=args.seed, frame_format=args.frame_format, flow_batch=args.flow_batch, device=device,
            overwrite=args.overwrite,
        )  # fmt: skip
    except (ValueError, FileNotFoundError, PairDataError) as e:  # ShardError, layout, weights, unreadable data
        raise UserError(str(e)) from e
    t = report["timings"]
    print(
        f"wrote {report['pairs']} pairs ({report['resolution'][0]}x{report['resolution'][1]}, flow "
        f"{report['flow_source']}) in {report['shards']} shard(s), {report['bytes'] / 1e6:.1f} MB "
        f"({report['bytes_per_pair'] / 1e6:.2f} MB/pair), {t['total_s']:.1f} s -> {args.out}"
    )
    bad = len(report["skipped_at_scan"]), len(report["failed_reads"]), len(report["failed_items"])
    if any(bad):
        print(
            f"skipped: {bad[0]} unreadable video(s) at scan, {bad[1]} failing while decoding (replaced by other "
            f"videos), {bad[2]} item(s) with no readable replacement; see {args.out}/prepare.json"
        )
    print(f"train with: poodle pretrain --dataset shards --data {args.out} (same data.resolution and data.repeat)")
    return 0
