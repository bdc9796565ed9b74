"""Every method's `*_synthdrive` config side by side: seconds per training step and peak memory, on this machine.

One step is what the engine runs: the method's forward on a batch of SynthDrive pairs (its views, its networks, its
loss), backward, gradient hooks, the optimiser step and the EMA update. Each method runs in its own subprocess so
that its peak resident memory (`ru_maxrss`) is its own; the pairs are rendered once before timing.

    PYTHONPATH=src python benchmarks/methods_step.py                # all methods, 2 warm-up + 5 timed steps
    PYTHONPATH=src python benchmarks/methods_step.py --steps 10 --threads 2
    PYTHONPATH=src python benchmarks/methods_step.py --device cuda  # on a GPU (bf16 autocast as in training)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CONFIGS = {
    "PooDLe": "synthdrive",
    "FlowE (release)": "flowe_synthdrive",
    "BYOL": "byol_synthdrive",
    "DINO-R50": "dino_r50_synthdrive",
    "DenseCL": "densecl_synthdrive",
    "PixPro": "pixpro_synthdrive",
}


def one(config: str, steps: int, warmup: int, device: str, threads: int) -> dict:
    import torch

    from poodle.config import load_config
    from poodle.engine.optim import build_optimizer
    from poodle.engine.pair_sources import build_pair_source
    from poodle.engine.train import _complete_batch, step_generator
    from poodle.objective import build_method

    torch.set_num_threads(threads)
    cfg = load_config(config, ["data.workers=0"])
    dev = torch.device(device)
    source, _ = build_pair_source(cfg)
    from poodle.engine.distributed import DistInfo

    batches = [b for _, b in zip(range(warmup + steps), source(0, warmup + steps, DistInfo()))]
    torch.manual_seed(0)
    method = build_method(cfg).to(dev)
    if dev.type == "cuda":
        method.autocast_device_types = ("cuda",)
    opt = build_optimizer(method.networks, cfg.optim)
    params = [p for p in method.networks.parameters() if p.requires_grad]
    times = []
    for i, batch in enumerate(batches):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        method.networks.update_target(0.99)
        batch = _complete_batch(batch, None, dev, method.needs_flow)
        out = method(batch, step_generator(dev, 0, 0, i))
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        method.after_backward(i, 100)
        opt.step()
        float(out["loss"])
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB -> MiB (Linux)
    res = {
        "config": config,
        "arch": cfg.model.arch,
        "pairs": cfg.optim.batch_size,
        "resolution": list(cfg.data.resolution),
        "params_m": sum(p.numel() for p in params) / 1e6,
        "s_per_step": sorted(times)[len(times) // 2],
        "peak_rss_mib": peak,
    }
    if dev.type == "cuda":
        res["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", help="one config name (internal: the per-method subprocess)")
    args = ap.parse_args(argv)
    if args.only:
        print(json.dumps(one(args.only, args.steps, args.warmup, args.device, args.threads)))
        return 0
    rows = []
    for label, config in CONFIGS.items():
        cmd = [sys.executable, __file__, "--only", config, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--threads", str(args.threads), "--device", args.device]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{label}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        rows.append((label, json.loads(proc.stdout.strip().splitlines()[-1])))
    print(f"`*_synthdrive` configs, {args.device}, {args.threads} threads, median of {args.steps} steps after "
          f"{args.warmup} warm-up:\n")  # fmt: skip
    print("| Method | Config | Arch | Pairs/step | Params (M) | s/step | Peak RSS (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for label, r in rows:
        print(f"| {label} | `{r['config']}` | {r['arch']} | {r['pairs']} | {r['params_m']:.1f} | "
              f"{r['s_per_step']:.2f} | {r['peak_rss_mib']:.0f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
