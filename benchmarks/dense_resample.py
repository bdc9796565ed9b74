"""Dense loss resampling, sequential vs composed (`objective.dense_resample`), side by side in one process.

Two parts, both at a config's resolution with 2 pairs (4 images per branch) and cached (smooth random) flow:

  loss   the dense loss alone, forward + backward of the stride-8 maps: `reference` (the release's way: whole
         batch, sequential resampling, autograd through every full-resolution tensor), `sequential` (ours:
         chunked, recomputed) and `composed` (one read per pixel, closed-form loss); plus the loss and gradient
         difference between sequential and composed on the same random maps.
  step   the whole training step (EMA, forward, backward, AdamW): `reference` (benchmarks/reference_step.py,
         fp32, per-crop loop, per-parameter EMA, unchunked loss), `sequential` and `composed` (PooDLeObjective
         with the switch set, fp32), and on request `composed_bf16` (the networks under CPU bf16 autocast, the
         precision ours uses on CUDA). One set of networks and one AdamW serve all paths, so the weights move
         between steps; that changes no shape and no op.

The variants run in turn, `--repeats` rounds of each, so machine contention falls on all of them alike; the
table gives the median and the min-max spread. Peak memory is the peak of tensor storage created during a run
and still alive (`LiveStorage`: every storage an op returns, counted until its last reference dies; on top of the
weights and AdamW state, without allocator caching or the interpreter), tracked around every timed run.

    PYTHONPATH=src .venv/bin/python -m benchmarks.dense_resample --config ablation --repeats 3
    PYTHONPATH=src .venv/bin/python -m benchmarks.dense_resample --config full --repeats 1 \\
        --loss-variants sequential,composed --step-paths sequential,composed
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parent))  # reference_step, train_step when run as a script
from poodle.config import load_config  # noqa: E402
from poodle.data.augment import sample_dense_geometry  # noqa: E402
from poodle.engine.optim import build_optimizer  # noqa: E402
from poodle.objective import PairBatch, PooDLeObjective  # noqa: E402
from poodle.objective.dense import (  # noqa: E402
    chunked_dense_loss,
    dense_loss,
    dense_loss_options,
    dense_target_and_mask,
    online_full_resolution,
)
from reference_step import reference_ema, reference_forward  # noqa: E402
from train_step import smooth_flow  # noqa: E402

CONFIGS = {"ablation": "poodle_ablation", "full": "poodle_bdd100k"}
TAU = 0.996


class LiveStorage(TorchDispatchMode):
    """Peak bytes of tensor storage created inside the mode and still alive: the run's working memory on top of
    what existed before it (weights, AdamW state). Each storage is counted once, when an op first returns it, and
    released when its last reference dies."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[weakref.ref, int]] = {}
        self.now = self.peak = 0

    def _release(self, key: int, nbytes: int) -> None:
        if self.live.pop(key, None) is not None:
            self.now -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                continue
            st = t.untyped_storage()
            key, nbytes = st.data_ptr(), st.nbytes()
            if nbytes == 0 or key in self.live:
                continue
            self.live[key] = (weakref.ref(st, lambda _, key=key, n=nbytes: self._release(key, n)), nbytes)
            self.now += nbytes
            self.peak = max(self.peak, self.now)
        return out


def tracked(fn) -> tuple[float, float]:
    """(seconds, peak GiB of tensor storage created during the call) of one call of `fn`."""
    mode = LiveStorage()
    with mode:
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
    return seconds, mode.peak / 2**30


def summarise(runs: dict[str, list[tuple[float, float]]]) -> dict[str, dict]:
    out = {}
    for name, values in runs.items():
        times = [t for t, _ in values]
        out[name] = {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
                     "peak_gib": max(m for _, m in values), "runs": len(times)}  # fmt: skip
    return out


def print_table(title: str, table: dict[str, dict], base: str) -> None:
    print(title)
    for name, r in table.items():
        speed = table[base]["median_s"] / r["median_s"] if base in table else float("nan")
        print(f"  {name:>10}: {r['median_s']:8.2f} s median ({r['min_s']:.2f}-{r['max_s']:.2f}, {r['runs']} runs), "
              f"{speed:5.2f}x {base}, peak tensors {r['peak_gib']:.2f} GiB")  # fmt: skip


def loss_part(cfg, images: int, repeats: int, variants: list[str]) -> dict:
    h, w = cfg.data.resolution
    c = cfg.model.proj_out_dim
    g = torch.Generator().manual_seed(0)
    online = torch.randn(images, c, h // 8, w // 8, generator=g).requires_grad_()
    target = torch.randn(images, c, h // 8, w // 8, generator=g)
    flow = smooth_flow(images, h, w, g)
    online_geo = sample_dense_geometry(images, (h, w), cfg.augment, None, torch.Generator().manual_seed(1))
    target_geo = sample_dense_geometry(images, (h, w), cfg.augment, None, torch.Generator().manual_seed(2))
    o = cfg.objective
    results: dict[str, tuple[float, torch.Tensor]] = {}

    def run(name: str) -> None:
        online.grad = None
        if name == "reference":  # reference_step.reference_forward's dense loss: whole batch, plain autograd
            with torch.no_grad():
                t, m = dense_target_and_mask(target, flow, -flow, target_geo, online_geo, o.occlusion_alpha1,
                                             o.occlusion_alpha2, o.target_order)  # fmt: skip
            loss = dense_loss(online_full_resolution(online, online_geo, (h, w)), t, m)
        else:
            loss, _ = chunked_dense_loss(online, target, flow, -flow, online_geo, target_geo,
                                         **{**dense_loss_options(o), "resample": name})  # fmt: skip
        loss.backward()
        results[name] = (loss.item(), online.grad.clone())

    runs: dict[str, list] = {name: [] for name in variants}
    for _ in range(repeats):
        for name in runs:
            runs[name].append(tracked(lambda name=name: run(name)))
    table = summarise(runs)
    print_table(f"dense loss alone, fwd + bwd: {images} images, {c} channels, {h} x {w}, chunk {o.dense_chunk}, "
                f"affine {cfg.augment.affine}, hflip {cfg.augment.hflip_p}", table, "sequential")  # fmt: skip
    (ls, gs), (lc, gc) = results["sequential"], results["composed"]
    diff = {"loss_sequential": ls, "loss_composed": lc, "loss_rel_diff": abs(lc - ls) / abs(ls),
            "grad_cosine": F.cosine_similarity(gs.flatten().double(), gc.flatten().double(), 0).item(),
            "grad_rel_diff": ((gc - gs).norm() / gs.norm()).item()}  # fmt: skip
    print(f"  sequential vs composed (random N(0,1) maps): loss {ls:.6f} vs {lc:.6f} (rel {diff['loss_rel_diff']:.1e}),"
          f" gradient cosine {diff['grad_cosine']:.6f}, |g_c - g_s| / |g_s| {diff['grad_rel_diff']:.1e}")  # fmt: skip
    return {"table": table, "difference": diff}


def step_part(cfg, pairs: int, repeats: int, paths: list[str]) -> dict:
    h, w = cfg.data.resolution
    cfg.run.precision, cfg.run.channels_last = "fp32", False  # CPU: both are CUDA-only anyway
    torch.manual_seed(0)
    objective = PooDLeObjective(cfg)
    networks = objective.networks
    optimizer = build_optimizer(networks, cfg.optim)
    g = torch.Generator().manual_seed(0)
    flow = smooth_flow(pairs, h, w, g)
    frames = torch.rand(2, pairs, 3, h, w, generator=g)
    batch = PairBatch(frames[0], frames[1], flow, -flow)

    def step(path: str) -> None:
        if path == "reference":
            reference_ema(networks, TAU)
            out = reference_forward(objective, batch)
        else:
            # composed_bf16: the composed path with the networks under bf16 autocast, as ours runs them on CUDA
            # (run.precision=bf16); CPU autocast is otherwise off in poodle. Warps, masks and losses stay fp32.
            bf16 = path == "composed_bf16"
            objective.cfg.objective.dense_resample = "composed" if bf16 else path
            objective.cfg.run.precision = "bf16" if bf16 else "fp32"
            objective.autocast_device_types = ("cuda", "cpu") if bf16 else ("cuda",)
            networks.update_target(TAU)
            out = objective(batch)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()

    step("composed")  # warm-up: AdamW state, thread pool, first-touch of the allocator
    runs: dict[str, list] = {p: [] for p in paths}
    for _ in range(repeats):
        for path in paths:
            runs[path].append(tracked(lambda path=path: step(path)))
    table = summarise(runs)
    base = "reference" if "reference" in table else "sequential"
    print_table(f"whole step: {cfg.model.arch}, {h} x {w}, {pairs} pairs, K={cfg.subcrops.num} subcrops of "
                f"{cfg.subcrops.size}, cached flow, fp32", table, base)  # fmt: skip
    return {"table": table}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=sorted(CONFIGS), default="ablation")
    ap.add_argument("--pairs", type=int, default=2, help="pairs per step; the loss part uses 2 x pairs images")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of every variant (interleaved)")
    ap.add_argument("--parts", default="loss,step", help="comma-separated subset of loss,step")
    ap.add_argument("--loss-variants", default="reference,sequential,composed", help="must include both paths")
    ap.add_argument("--step-paths", default="reference,sequential,composed", help="also: composed_bf16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="write the figures to this JSON file")
    ap.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    cfg = load_config(CONFIGS[args.config], args.overrides)
    print(f"config {args.config} ({CONFIGS[args.config]} {' '.join(args.overrides)}), CPU, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")  # fmt: skip
    report: dict = {"config": args.config, "pairs": args.pairs, "threads": torch.get_num_threads()}
    parts = args.parts.split(",")
    if "loss" in parts:
        report["loss"] = loss_part(cfg, 2 * args.pairs, args.repeats, args.loss_variants.split(","))
    if "step" in parts:
        report["step"] = step_part(cfg, args.pairs, args.repeats, args.step_paths.split(","))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
