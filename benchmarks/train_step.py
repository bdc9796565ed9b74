"""Training-step throughput: our step vs the release-style reference, with achieved TFLOP/s and MFU.

One step = EMA update, photometric + dense-branch augmentation, target forward, online forward + backward of
both losses on both frame orderings, AdamW update; with --flow raft/release, RAFT too.

Inputs (--data): `random` frames with a cached smooth random flow (no data pipeline), or `shards`: the engine's
own loader (PairSource + DataLoader workers) reading prepared shards (`poodle prepare` format; with no --shards
DIR, a small SynthDrive set at the config resolution is rendered and prepared in a temp folder first). With shards,
the time the step waits for its batch (next() + host-to-device copy, the step synchronised) is the data wait.

Flow (--flow): `cached` on both paths (the default: RAFT neither timed nor counted); `release`: the reference
recomputes RAFT-large (24 iterations, fp32) on [a; b] -> [b; a] every step, as the authors' release does, and ours
uses the cached flow (the headline comparison); `raft`: both recompute, ours with the shared-encoder
bidirectional call. RAFT weights: --raft-weights FILE, else random init (same FLOPs and time).

Paths (same networks, same AdamW; benchmarks/reference_step.py has the reference):
  reference  the release's execution: fp32 eager, no channels_last, unchunked full-resolution dense loss,
             subcrops cut one by one with resized_crop (host syncs), per-parameter Python EMA loop.
  ours       PooDLeObjective: bf16 autocast on CUDA, channels_last on CUDA, batched roi_align subcrops,
             chunked + recomputed dense loss, fused _foreach EMA; optional torch.compile (--compile).

FLOPs per step come from the analytic model (poodle.engine.flops, conv/linear/matmul only); MFU is achieved
FLOP/s over a matmul ceiling measured in the same run (bf16 8192^3 on CUDA, fp32 2048^3 on CPU). Each path runs
in its own subprocess so that its peak memory (CUDA max allocated, or process max RSS on CPU) is its own.

    PYTHONPATH=src python benchmarks/train_step.py --config cpu                     # resnet18, 128x256, 2 pairs
    PYTHONPATH=src python benchmarks/train_step.py --config full --device cuda --steps 10 --flow release
    PYTHONPATH=src python benchmarks/train_step.py --config full --device cuda --paths ours --data shards --compile
    PYTHONPATH=src python -m benchmarks.train_step ...                              # the same, as a module
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # reference_step, when run as a script
from poodle.config import Config, load_config  # noqa: E402
from poodle.data.optical_flow import RaftFlow  # noqa: E402
from poodle.engine.distributed import DistInfo  # noqa: E402
from poodle.engine.flops import raft_gflops, step_flops  # noqa: E402
from poodle.engine.optim import build_optimizer  # noqa: E402
from poodle.engine.pair_sources import build_pair_source  # noqa: E402
from poodle.objective import PairBatch, PooDLeObjective  # noqa: E402
from reference_step import reference_ema, reference_forward  # noqa: E402

CONFIGS = {  # name -> (config, overrides, default pairs per step: 8 per GPU is the full recipe)
    "full": ("poodle_bdd100k", [], 8),
    "ablation": ("poodle_ablation", [], 8),
    "cpu": ("poodle_ablation", ["model.arch=resnet18", "data.resolution=[128,256]"], 2),
}
TAU = 0.996
RAFT_ITERS = 24  # spec decision 14: the release's 24 iterations


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


def benchmark_shards(cfg: Config, out: Path, pairs: int, workers: int, repeat: int) -> Path:
    """A small shards folder at the config resolution: SynthDrive videos rendered at that size, DIS flow, JPEG
    frames (`poodle prepare --frame-format jpg`). The loader cycles through it; decode cost per pair is real."""
    from poodle.data.shards import prepare_shards
    from poodle.data.synthdrive.dataset import generate_dataset

    h, w = cfg.data.resolution
    synth, shards = out / "synthdrive", out / "shards"
    generate_dataset(synth, preset="small", resolution=(h, w), train_videos=2, val_videos=0, train_images=1,
                     val_images=0, seconds=1.0, flow_pairs=0, progress=False, overwrite=True)  # fmt: skip
    prep = load_config(CONFIGS["cpu"][0], [f"data.root={synth}", "data.dataset=synthdrive", "flow.source=dis",
                                           f"data.resolution=[{h},{w}]", f"data.repeat={repeat}"])  # fmt: skip
    prepare_shards(prep, shards, pairs, progress=False, overwrite=True, workers=workers, frame_format="jpg")
    return shards


class Inputs:
    """Batches for the timed steps: one fixed random batch, or the engine's loader over prepared shards."""

    def __init__(
        self, cfg: Config, device: torch.device, pairs: int, shards: str | None, workers: int, steps: int, warmup: int
    ):
        self.device = device
        if shards is None:
            h, w = cfg.data.resolution
            g = torch.Generator().manual_seed(0)
            flow = smooth_flow(pairs, h, w, g)
            frames = torch.rand(2, pairs, 3, h, w, generator=g)
            self.fixed = PairBatch(frames[0], frames[1], flow, -flow).to(device)
            return
        self.fixed = None
        index = Path(shards) / "index.json"
        if not index.is_file():
            raise SystemExit(f"--shards {shards}: no index.json there; pass a folder written by `poodle prepare`")
        meta = json.loads(index.read_text())["poodle"]
        if tuple(meta["resolution"]) != tuple(cfg.data.resolution) or pairs % meta["repeat"]:
            raise SystemExit(f"{shards}: prepared at {meta['resolution']} with repeat {meta['repeat']}; the benchmark "
                             f"needs {list(cfg.data.resolution)} and a repeat dividing {pairs} pairs")  # fmt: skip
        data = load_config("poodle_ablation", [f"data.root={shards}", "data.dataset=shards",
                                               f"data.resolution={list(cfg.data.resolution)}".replace(" ", ""),
                                               f"data.repeat={meta['repeat']}", f"data.workers={workers}",
                                               f"optim.batch_size={pairs}"])  # fmt: skip
        source, _ = build_pair_source(data)
        self.batches = iter(source(0, steps + warmup + 1, DistInfo()))

    def next(self) -> PairBatch:
        if self.fixed is not None:
            return self.fixed
        return next(self.batches).to(self.device, non_blocking=True)


def run_path(path: str, cfg: Config, device: torch.device, pairs: int, steps: int, args) -> dict:
    """Time `steps` steps (after `args.warmup` untimed ones) of one path: seconds/step, data wait, peak memory."""
    if path == "reference":
        cfg.run.precision, cfg.run.channels_last = "fp32", False
    torch.manual_seed(0)
    objective = PooDLeObjective(cfg).to(device)
    if path == "ours" and cfg.run.channels_last and device.type == "cuda":
        objective = objective.to(memory_format=torch.channels_last)  # as engine/train.py
    networks = objective.networks
    optimizer = build_optimizer(networks, cfg.optim)
    inputs = Inputs(cfg, device, pairs, args.shards, args.workers, steps, args.warmup)
    raft = None
    if args.flow == "raft" or (args.flow == "release" and path == "reference"):
        raft = RaftFlow("large", weights=args.raft_weights or None, iters=RAFT_ITERS).to(device)
    forward = objective
    if args.compile and path == "ours":
        forward = torch.compile(objective, mode=None if args.compile == "default" else args.compile)

    def with_flow(batch: PairBatch) -> PairBatch:
        if raft is None:
            return batch
        if path == "reference":  # the release: 2N pairs [a; b] -> [b; a], every frame encoded twice
            a, b = batch.frame_a, batch.frame_b
            flow_ab, flow_ba = raft(torch.cat([a, b]), torch.cat([b, a])).chunk(2)
        else:
            flow_ab, flow_ba = raft.bidirectional(batch.frame_a, batch.frame_b)
        return PairBatch(batch.frame_a, batch.frame_b, flow_ab, flow_ba)

    def step(measure_wait: bool = True) -> float:
        """One step; returns the seconds spent waiting for the batch (the step before it is synchronised)."""
        t0 = time.perf_counter()
        batch = inputs.next()
        if measure_wait:  # the harness's own sync; left out of the step whose syncs are counted
            _sync(device)
        wait = time.perf_counter() - t0
        batch = with_flow(batch)
        if path == "reference":
            reference_ema(networks, TAU)
            out = reference_forward(objective, batch)
        else:
            networks.update_target(TAU)
            out = forward(batch)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        return wait

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):  # allocator, cuDNN autotune, compilation, DataLoader workers
        step()
    syncs = None
    if device.type == "cuda":  # count host syncs in one step: each synchronising call warns once
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step(measure_wait=False)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = sum("synchroniz" in str(w.message) for w in caught)
    times, waits = [], []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        waits.append(step())
        _sync(device)
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak, peak_what = torch.cuda.max_memory_allocated(device) / 2**30, "peak CUDA allocated"
    else:
        peak, peak_what = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "peak process RSS"
    order = sorted(range(steps), key=times.__getitem__)
    return {
        "path": path,
        "median_s": times[order[steps // 2]],
        "min_s": times[order[0]],
        "data_wait_share": sum(waits) / sum(times),
        "host_syncs_per_step": syncs,
        "peak_gib": peak,
        "peak": peak_what,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--pairs", type=int, default=None, help="pairs per step (default: 8 full/ablation, 2 cpu)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per path, after the warm-up steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation needs 2 or more)")
    ap.add_argument("--paths", default="reference,ours", help="comma-separated subset of reference,ours")
    ap.add_argument(
        "--compile",
        nargs="?",
        const="default",
        default=None,
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
        help="torch.compile the objective on the ours path (reduce-overhead adds CUDA graphs)",
    )
    ap.add_argument(
        "--data",
        choices=["random", "shards"],
        default="random",
        help="random: one fixed batch, nothing loaded; shards: the engine's loader, data wait measured",
    )
    ap.add_argument("--shards", default=None, help="prepared shards folder at the config resolution (--data shards)")
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader workers")
    ap.add_argument(
        "--flow",
        choices=["cached", "release", "raft"],
        default="cached",
        help="cached: no RAFT; release: the reference recomputes RAFT every step; raft: both do",
    )
    ap.add_argument("--raft-weights", default=None, help="RAFT-large state dict (default: random init)")
    ap.add_argument(
        "--predict-memory",
        action="store_true",
        help="also print the fake-tensor memory model's peak for the ours path (poodle.engine.memory)",
    )
    ap.add_argument(
        "--roofline",
        action="store_true",
        help="also print the op-by-op H200 roofline of the ours path (poodle.engine.roofline)",
    )
    ap.add_argument("--json", default=None, help="write every figure to this JSON file")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: run one path, print JSON
    ap.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = ap.parse_args(argv)

    cfg = build_config(args.config, args.overrides)
    pairs = args.pairs or CONFIGS[args.config][2]
    device = torch.device(args.device)
    if args.child:
        result = run_path(args.child, cfg, device, pairs, args.steps, args)
        print("RESULT " + json.dumps(result))
        return 0

    tmp = None
    if args.data == "shards" and args.shards is None:
        tmp = tempfile.TemporaryDirectory(prefix="poodle-bench-")
        t0 = time.perf_counter()
        repeat = 2 if pairs % 2 == 0 else 1  # pairs per video read, as in training
        args.shards = str(benchmark_shards(cfg, Path(tmp.name), 4 * max(pairs, 8), args.workers, repeat))
        print(f"benchmark shards: SynthDrive at {cfg.data.resolution}, prepared in {time.perf_counter() - t0:.0f} s")
    if args.data == "random":
        args.shards = None

    h, w = cfg.data.resolution
    flops = step_flops(cfg)
    step_total = flops.total * pairs
    raft_pair = raft_gflops((h, w), RAFT_ITERS, shared=False) * 1e9 if args.flow != "cached" else 0.0
    ceiling = matmul_ceiling(device)
    print(
        f"config {args.config} ({CONFIGS[args.config][0]} {' '.join(CONFIGS[args.config][1] + args.overrides)}): "
        f"{cfg.model.arch}, {h}x{w}, K={cfg.subcrops.num} subcrops of {cfg.subcrops.size}, {pairs} pairs/step"
    )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device {device} ({name}), torch {torch.__version__}; data {args.data}; flow {args.flow}"
          + ("" if args.compile is None else f"; torch.compile mode {args.compile}"))  # fmt: skip
    print(f"FLOP model: {flops.total / 1e9:.1f} GFLOP/pair, {step_total / 1e9:.1f} GFLOP/step (model only)"
          + (f"; RAFT-large x{RAFT_ITERS}, both directions: {raft_pair / 1e9:.1f} GFLOP/pair, not in MFU"
             if raft_pair else ""))  # fmt: skip
    dtype = "bf16" if device.type == "cuda" else "fp32"
    print(f"matmul ceiling ({dtype}): {ceiling / 1e12:.2f} TFLOP/s")
    report = {"config": args.config, "pairs": pairs, "device": name, "torch": torch.__version__, "data": args.data,
              "flow": args.flow, "compile": args.compile, "gflop_per_pair": flops.total / 1e9,
              "raft_gflop_per_pair": raft_pair / 1e9, "ceiling_tflops": ceiling / 1e12, "paths": {}}  # fmt: skip
    if args.predict_memory:
        from poodle.engine.memory import step_memory

        predicted = step_memory(build_config(args.config, args.overrides), pairs)
        print(f"memory model (ours): {predicted.summary()}")
        report["predicted_peak_gib"] = predicted.peak / 2**30
    if args.roofline:
        from poodle.engine.roofline import dense_loss_roofline, step_roofline

        roof = step_roofline(build_config(args.config, args.overrides), pairs)
        print(roof.summary())
        loss_roof = dense_loss_roofline(build_config(args.config, args.overrides), pairs)
        print("of which chunked_dense_loss alone, " + loss_roof.summary())
        report["roofline"] = {"device": roof.device.name, "seconds": roof.seconds, "pairs_per_s": pairs / roof.seconds,
                              "mfu": roof.mfu_bound(), "kernels": roof.kernels, "gbytes": roof.bytes / 1e9,
                              "dense_loss_seconds": loss_roof.seconds,
                              "dense_loss_gbytes": loss_roof.bytes / 1e9}  # fmt: skip

    results = report["paths"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1] / "src"),
                                                      env.get("PYTHONPATH")]))  # fmt: skip
    for path in args.paths.split(","):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--config", args.config, "--device", args.device,
               "--pairs", str(pairs), "--steps", str(args.steps), "--warmup", str(args.warmup), "--child", path,
               "--data", args.data, "--workers", str(args.workers), "--flow", args.flow,
               *(["--shards", args.shards] if args.shards else []),
               *(["--raft-weights", args.raft_weights] if args.raft_weights else []),
               *(["--compile", args.compile] if args.compile else []), *args.overrides]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            print(f"{path}: failed (exit {proc.returncode})\n{proc.stderr[-3000:]}")
            continue
        r = results[path] = json.loads(line[0].removeprefix("RESULT "))
        r["pairs_per_s"] = pairs / r["median_s"]
        r["tflops"] = step_total / r["median_s"] / 1e12
        r["mfu"] = r["tflops"] * 1e12 / ceiling
        syncs = "" if r["host_syncs_per_step"] is None else f", {r['host_syncs_per_step']} host syncs/step"
        wait = f", data wait {100 * r['data_wait_share']:.1f} %" if args.data == "shards" else ""
        print(
            f"{path:>9}: {r['median_s']:.3f} s/step (min {r['min_s']:.3f}), {r['pairs_per_s']:.2f} pairs/s, "
            f"{r['tflops']:.3f} TFLOP/s, MFU {100 * r['mfu']:.1f} %, {r['peak']} {r['peak_gib']:.2f} GiB{wait}{syncs}"
        )
    if "reference" in results and "ours" in results:
        speedup = results["reference"]["median_s"] / results["ours"]["median_s"]
        mem = results["ours"]["peak_gib"] / results["reference"]["peak_gib"]
        report["ours_over_reference"] = {"throughput": speedup, "peak_memory": mem}
        print(f"ours/reference: {speedup:.2f}x throughput, {mem:.2f}x peak memory")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0 if len(results) == len(args.paths.split(",")) else 1


if __name__ == "__main__":
    sys.exit(main())
