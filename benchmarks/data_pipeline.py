"""Pairs per second delivered by the data pipeline vs consumed by one training step (issue 4 benchmark).

Sources, each read through the engine's own loader (`PairSource`: StepBatchSampler + collate_pair_samples) with
0, 1 and 2 DataLoader workers at the `synthdrive` config (64x128 pairs, repeat 2, batch 8 pairs):
  (a) SynthDrive rendered on the fly with exact flow (`flow.source=gt`, what `poodle demo` trains on);
  (b) SynthDrive's videos decoded by the BDD100K-style loader (frames only; the flow is still to be estimated);
  (c) shards written by `poodle prepare` (frames + flow, gt).
Plus DIS flow (both directions) on a batch, i.e. what (b) costs the step, and one training step
(PooDLeObjective forward + backward + AdamW, as benchmarks/objective_step.py) on a batch of the same size.

    PYTHONPATH=src python benchmarks/data_pipeline.py                  # prints a Markdown table
    PYTHONPATH=src python benchmarks/data_pipeline.py --batches 20 --workers 0 2
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from poodle.config import load_config
from poodle.data.optical_flow import DISFlow
from poodle.data.shards import prepare_shards
from poodle.data.synthdrive.dataset import generate_dataset
from poodle.engine.distributed import DistInfo
from poodle.engine.pair_sources import build_pair_source
from poodle.objective import PairBatch, PooDLeObjective


def loader_rate(cfg, batches: int) -> float:
    """Pairs/s of the engine's loader over `batches` batches, after one warm-up batch (worker start-up)."""
    source, _ = build_pair_source(cfg)
    it = iter(source(0, batches + 1, DistInfo()))
    next(it)
    t0 = time.perf_counter()
    pairs = sum(b.frame_a.shape[0] for b in it)
    return pairs / (time.perf_counter() - t0)


def dis_rate(cfg, batches: int) -> float:
    source, _ = build_pair_source(cfg)
    dis = DISFlow()
    data = list(source(0, batches, DistInfo()))
    t0 = time.perf_counter()
    for b in data:
        dis.bidirectional(b.frame_a, b.frame_b)
    return sum(b.frame_a.shape[0] for b in data) / (time.perf_counter() - t0)


def step_rate(cfg, steps: int) -> float:
    """Pairs/s one training step consumes (forward + backward + update of the synthdrive config)."""
    source, _ = build_pair_source(cfg)
    batch = next(iter(source(0, 1, DistInfo())))
    torch.manual_seed(0)
    objective = PooDLeObjective(cfg)
    params = [p for p in objective.networks.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    batch = PairBatch(batch.frame_a.float() / 255, batch.frame_b.float() / 255, batch.flow_ab, batch.flow_ba)

    def step() -> None:
        objective.networks.update_target(0.996)
        out = objective(batch)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch.frame_a.shape[0] / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="synthdrive")
    ap.add_argument("--batches", type=int, default=10, help="timed batches per loader measurement")
    ap.add_argument("--steps", type=int, default=3, help="timed training steps")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--videos", type=int, default=8, help="SynthDrive training videos to generate")
    ap.add_argument("--work-dir", help="where to put the generated dataset and shards (default: a temp folder)")
    ap.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = ap.parse_args(argv)

    tmp = tempfile.TemporaryDirectory() if args.work_dir is None else None
    work = Path(args.work_dir or tmp.name)
    synth = work / "synthdrive"
    if not (synth / "meta.json").is_file():
        generate_dataset(synth, preset="small", train_videos=args.videos, val_videos=0, train_images=1,
                         val_images=0, seconds=2.0, flow_pairs=0, progress=False, overwrite=True)  # fmt: skip
    base = load_config(args.config, args.overrides)
    batch_pairs = base.optim.batch_size
    need = batch_pairs * (args.batches + 1)
    gt = load_config(args.config, [*args.overrides, f"data.root={synth}", "flow.source=gt"])
    shards = work / "shards"
    report = prepare_shards(gt, shards, need, progress=False, overwrite=True, workers=0)

    sources = {
        "(a) SynthDrive rendered on the fly, exact flow": [f"data.root={synth}", "flow.source=gt"],
        "(b) SynthDrive videos decoded (bdd100k-style loader), no flow": [
            f"data.root={synth}", "flow.source=dis", "data.dataset=synthdrive",
        ],
        "(c) prepared shards (frames + fp16 flow)": ["data.dataset=shards", f"data.root={shards}"],
    }  # fmt: skip
    rows = []
    for name, extra in sources.items():
        rates = []
        for w in args.workers:
            cfg = load_config(args.config, [*args.overrides, *extra, f"data.workers={w}"])
            rates.append(loader_rate(cfg, args.batches))
        rows.append((name, rates))
    dis_cfg = load_config(args.config, [*args.overrides, *sources["(c) prepared shards (frames + fp16 flow)"]])
    dis = dis_rate(dis_cfg, args.batches)
    step = step_rate(load_config(args.config, [*args.overrides, *extra, "data.workers=0"]), args.steps)

    h, w = base.data.resolution
    print(f"config {args.config} ({base.model.arch}, {h}x{w}, {batch_pairs} pairs/batch, repeat {base.data.repeat}),"
          f" torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs visible, "
          f"{platform.processor() or platform.machine()}")  # fmt: skip
    print(f"shards: {report['pairs']} pairs, {report['bytes_per_pair'] / 1e3:.1f} kB/pair, prepared at "
          f"{report['pairs_per_second']:.1f} pairs/s (gt, 0 workers)\n")  # fmt: skip
    print("| pairs/s delivered | " + " | ".join(f"{w} workers" for w in args.workers) + " |")
    print("|---|" + "---:|" * len(args.workers))
    for name, rates in rows:
        print(f"| {name} | " + " | ".join(f"{r:.1f}" for r in rates) + " |")
    print(f"| DIS flow, both directions, on a batch (what (b) adds to the step) | {dis:.1f} (main process) |")
    print(f"| **one training step consumes** (forward + backward + AdamW) | {step:.1f} |")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
