"""Seconds per PooDLe training step and peak memory (issue 3 benchmark).

One step = photometric + dense-branch augmentation, target forward, online forward + backward of both losses on
both frame orderings, AdamW update and EMA update. Inputs are random frames with a smooth random flow, so the
data pipeline is not measured here.

    PYTHONPATH=src python benchmarks/objective_step.py --preset synthdrive   # the demo's config: r18, 64x128, 8 pairs
    PYTHONPATH=src python benchmarks/objective_step.py --preset cpu          # resnet18, 128x256, 2 pairs
    PYTHONPATH=src python benchmarks/objective_step.py --preset full         # R50 + SDM, 512x1024, 2 pairs
    PYTHONPATH=src python benchmarks/objective_step.py --preset full --device cuda
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import torch

from poodle.config import load_config
from poodle.objective import PairBatch, PooDLeObjective

PRESETS = {
    "synthdrive": ("synthdrive", [], 8),  # what `poodle demo` trains
    "cpu": ("poodle_ablation", ["model.arch=resnet18", "data.resolution=[128,256]"], 2),
    "ablation": ("poodle_ablation", [], 2),
    "full": ("poodle_bdd100k", [], 2),
}


def smooth_flow(n: int, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
    coarse = torch.randn(n, 2, 4, 8, generator=generator) * 0.03 * w
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--pairs", type=int, default=None, help="pairs per step (default: 2)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = ap.parse_args(argv)

    name, overrides, pairs = PRESETS[args.preset]
    pairs = args.pairs or pairs
    cfg = load_config(name, [*overrides, *args.overrides])
    device = torch.device(args.device)
    torch.manual_seed(0)
    objective = PooDLeObjective(cfg).to(device)
    params = [p for p in objective.networks.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    h, w = cfg.data.resolution
    g = torch.Generator().manual_seed(0)
    flow = smooth_flow(pairs, h, w, g)
    batch = PairBatch(torch.rand(pairs, 3, h, w, generator=g), torch.rand(pairs, 3, h, w, generator=g), flow, -flow)
    batch = batch.to(device)

    def step() -> float:
        objective.networks.update_target(0.996)
        out = objective(batch)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        return float(out["loss"].detach())

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step()  # warm-up
    times = []
    for _ in range(args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
        peak_what = "peak CUDA memory allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
        peak_what = "peak process RSS"
    n_params = sum(p.numel() for p in params) / 1e6
    print(
        f"preset {args.preset} ({name} {' '.join(overrides + args.overrides)}), {cfg.model.arch}, {h}x{w}, "
        f"{pairs} pairs/step, device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print(f"trainable parameters: {n_params:.1f} M")
    print(f"seconds/step: median {sorted(times)[len(times) // 2]:.3f}, min {min(times):.3f} over {len(times)} steps")
    print(f"{peak_what}: {peak:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
