"""Training-step throughput: our step vs the release-style reference, with achieved TFLOP/s and MFU.

One step = EMA update, photometric + dense-branch augmentation, target forward, online forward + backward of
both losses on both frame orderings, AdamW update. Frames are random and the flow is cached (a smooth random
field), so neither the data pipeline nor the flow network (RAFT) is timed or counted.

Paths (same networks, same AdamW; benchmarks/reference_step.py has the reference):
  reference  the release's execution: fp32 eager, no channels_last, unchunked full-resolution dense loss,
             subcrops cut one by one with resized_crop (host syncs), per-parameter Python EMA loop.
  ours       PooDLeObjective: bf16 autocast on CUDA, channels_last on CUDA, batched roi_align subcrops,
             chunked + recomputed dense loss, fused _foreach EMA; optional torch.compile (--compile).

FLOPs per step come from the analytic model (poodle.engine.flops, conv/linear/matmul only); MFU is achieved
FLOP/s over a matmul ceiling measured in the same run (bf16 8192^3 on CUDA, fp32 2048^3 on CPU). Each path runs
in its own subprocess so that its peak memory (CUDA max allocated, or process max RSS on CPU) is its own.

    PYTHONPATH=src python benchmarks/train_step.py --config cpu                     # resnet18, 128x256, 2 pairs
    PYTHONPATH=src python benchmarks/train_step.py --config full --device cuda --pairs 4 --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # reference_step, when run as a script
from poodle.config import Config, load_config  # noqa: E402
from poodle.engine.flops import step_flops  # noqa: E402
from poodle.engine.optim import build_optimizer  # noqa: E402
from poodle.objective import PairBatch, PooDLeObjective  # noqa: E402
from reference_step import reference_ema, reference_forward  # noqa: E402

CONFIGS = {  # name -> (config, overrides, default pairs per step)
    "full": ("poodle_bdd100k", [], 2),
    "ablation": ("poodle_ablation", [], 2),
    "cpu": ("poodle_ablation", ["model.arch=resnet18", "data.resolution=[128,256]"], 2),
}
TAU = 0.996


def build_config(name: str, extra: list[str]) -> Config:
    base, overrides, _ = CONFIGS[name]
    return load_config(base, [*overrides, *extra])


def smooth_flow(n: int, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
    coarse = torch.randn(n, 2, 4, 8, generator=generator) * 0.03 * w
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_ceiling(device: torch.device) -> float:
    """Best achieved FLOP/s of a large square matmul: bf16 on CUDA, fp32 on CPU (the MFU denominator)."""
    n, dtype, reps = (8192, torch.bfloat16, 20) if device.type == "cuda" else (2048, torch.float32, 3)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up (cuBLAS heuristics, thread pool)
    best = float("inf")
    for _ in range(3):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        best = min(best, (time.perf_counter() - t0) / reps)
    return 2.0 * n**3 / best


def run_path(path: str, cfg: Config, device: torch.device, pairs: int, steps: int, compile_: bool) -> dict:
    """Time `steps` steps (after 2 warm-ups) of one path; returns seconds/step and peak memory."""
    if path == "reference":
        cfg.run.precision, cfg.run.channels_last = "fp32", False
    torch.manual_seed(0)
    objective = PooDLeObjective(cfg).to(device)
    if path == "ours" and cfg.run.channels_last and device.type == "cuda":
        objective = objective.to(memory_format=torch.channels_last)  # as engine/train.py
    networks = objective.networks
    optimizer = build_optimizer(networks, cfg.optim)
    h, w = cfg.data.resolution
    g = torch.Generator().manual_seed(0)
    flow = smooth_flow(pairs, h, w, g)
    batch = PairBatch(torch.rand(pairs, 3, h, w, generator=g), torch.rand(pairs, 3, h, w, generator=g), flow, -flow)
    batch = batch.to(device)
    forward = torch.compile(objective) if (compile_ and path == "ours") else objective

    def step() -> None:
        if path == "reference":
            reference_ema(networks, TAU)
            out = reference_forward(objective, batch)
        else:
            networks.update_target(TAU)
            out = forward(batch)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(2):  # warm-up: allocator, cuDNN autotune, compilation
        step()
    times = []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak, peak_what = torch.cuda.max_memory_allocated(device) / 2**30, "peak CUDA allocated"
    else:
        peak, peak_what = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "peak process RSS"
    times.sort()
    return {"path": path, "median_s": times[len(times) // 2], "min_s": times[0], "peak_gib": peak, "peak": peak_what}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--pairs", type=int, default=None, help="pairs per step (default: 2)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per path, after 2 warm-up steps")
    ap.add_argument("--paths", default="reference,ours", help="comma-separated subset of reference,ours")
    ap.add_argument("--compile", action="store_true", help="torch.compile the objective on the ours path")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: run one path, print JSON
    ap.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = ap.parse_args(argv)

    cfg = build_config(args.config, args.overrides)
    pairs = args.pairs or CONFIGS[args.config][2]
    device = torch.device(args.device)
    if args.child:
        result = run_path(args.child, cfg, device, pairs, args.steps, args.compile)
        print("RESULT " + json.dumps(result))
        return 0

    flops = step_flops(cfg)
    step_total = flops.total * pairs
    ceiling = matmul_ceiling(device)
    h, w = cfg.data.resolution
    print(
        f"config {args.config} ({CONFIGS[args.config][0]} {' '.join(CONFIGS[args.config][1] + args.overrides)}): "
        f"{cfg.model.arch}, {h}x{w}, K={cfg.subcrops.num} subcrops of {cfg.subcrops.size}, {pairs} pairs/step"
    )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device {device} ({name}), torch {torch.__version__}; flow cached (RAFT not timed or counted)")
    print(f"FLOP model: {flops.total / 1e9:.1f} GFLOP/pair, {step_total / 1e9:.1f} GFLOP/step")
    dtype = "bf16" if device.type == "cuda" else "fp32"
    print(f"matmul ceiling ({dtype}): {ceiling / 1e12:.2f} TFLOP/s")

    results = {}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1] / "src"),
                                                      env.get("PYTHONPATH")]))  # fmt: skip
    for path in args.paths.split(","):
        cmd = [sys.executable, __file__, "--config", args.config, "--device", args.device, "--pairs", str(pairs),
               "--steps", str(args.steps), "--child", path, *(["--compile"] if args.compile else []),
               *args.overrides]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            print(f"{path}: failed (exit {proc.returncode})\n{proc.stderr[-3000:]}")
            continue
        r = results[path] = json.loads(line[0].removeprefix("RESULT "))
        tflops = step_total / r["median_s"] / 1e12
        print(
            f"{path:>9}: {r['median_s']:.3f} s/step (min {r['min_s']:.3f}), {pairs / r['median_s']:.2f} pairs/s, "
            f"{tflops:.3f} TFLOP/s, MFU {100 * tflops * 1e12 / ceiling:.1f} %, {r['peak']} {r['peak_gib']:.2f} GiB"
        )
    if "reference" in results and "ours" in results:
        speedup = results["reference"]["median_s"] / results["ours"]["median_s"]
        mem = results["ours"]["peak_gib"] / results["reference"]["peak_gib"]
        print(f"ours/reference: {speedup:.2f}x throughput, {mem:.2f}x peak memory")
    return 0 if len(results) == len(args.paths.split(",")) else 1


if __name__ == "__main__":
    sys.exit(main())
