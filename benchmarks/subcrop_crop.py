"""Subcrop cropping: cost and output of the two crop modes (`subcrops.crop_mode`) on SynthDrive frames and boxes.

    PYTHONPATH=src python benchmarks/subcrop_crop.py [--repeats 5] [--device cpu] [--threads 1] [--shapes demo full]

For each shape, one `crop_pairs` call (online + target crops of every subcrop pair, as the training step makes
it) timed per mode, then the crops compared: `roi_align` (old default) against `resized_crop` (new default), over
the whole crop and without its outer 3 px, for boxes upsampled on both axes and boxes shrunk on at least one, and
`resized_crop` against a per-box loop of torchvision's `resized_crop(..., antialias=True)` (the release's call).

Shapes: demo = 16 images 64x128 (8 pairs, both orderings), subcrop size from configs/synthdrive.yaml;
full = 8 images 512x1024 (4 pairs), 192 px subcrops. K = 6 pairs per image.
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
from torchvision.transforms.v2 import functional as TF

from poodle.config import SubcropConfig, load_config
from poodle.data.subcrops import crop_pairs, flow_aware_subcrops, pair_sources
from poodle.data.synthdrive import SynthDriveSequence

SHAPES = {"demo": (8, (64, 128), None), "full": (4, (512, 1024), 192)}


def synthdrive_batch(pairs: int, hw: tuple[int, int], dt: int = 15) -> tuple[torch.Tensor, torch.Tensor]:
    """[x_t; x_t+dt] frames (2N, 3, H, W) in [0, 1] and the flows to their pairs (2N, 2, H, W)."""
    fa, fb, fab, fba = [], [], [], []
    for i in range(pairs):
        seq = SynthDriveSequence(seed=1, index=i, resolution=hw)
        t = (13 * i) % 60
        fa.append(torch.from_numpy(seq.frame(t)).permute(2, 0, 1))
        fb.append(torch.from_numpy(seq.frame(t + dt)).permute(2, 0, 1))
        fab.append(torch.from_numpy(seq.flow(t, t + dt)).permute(2, 0, 1))
        fba.append(torch.from_numpy(seq.flow(t + dt, t)).permute(2, 0, 1))
    frames = torch.stack(fa + fb).float() / 255
    return frames, torch.stack(fab + fba)


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median ms per call after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1: stable timings on a shared machine)")
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    demo_size = load_config("synthdrive").subcrops.size
    print(f"device {device}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}\n")
    print("| shape | crops | roi_align ms | resized_crop ms | ratio |")
    print("|---|---:|---:|---:|---:|")
    diffs = []
    for name in args.shapes:
        pairs, hw, size = SHAPES[name]
        size = size or demo_size
        frames, flow = synthdrive_batch(pairs, hw)
        frames, flow = frames.to(device), flow.to(device)
        n = frames.shape[0]
        boxes = flow_aware_subcrops(flow, SubcropConfig(), generator=torch.Generator(device).manual_seed(0))
        paired = (torch.arange(n, device=device) + n // 2) % n
        ms = {}
        for mode in ("roi_align", "resized_crop"):
            call = functools.partial(crop_pairs, frames, boxes, size, paired_index=paired, mode=mode)
            ms[mode] = timed(call, args.repeats, device)
        crops = 2 * boxes.online.shape[0] * boxes.num
        print(
            f"| {name}: {n} x {hw[0]}x{hw[1]} -> {size} px | {crops} | {ms['roi_align']:.1f} | "
            f"{ms['resized_crop']:.1f} | {ms['resized_crop'] / ms['roi_align']:.1f}x |"
        )
        old = torch.cat(crop_pairs(frames, boxes, size, paired_index=paired, mode="roi_align"))
        new = torch.cat(crop_pairs(frames, boxes, size, paired_index=paired, mode="resized_crop"))
        all_boxes = torch.cat((boxes.online.reshape(-1, 4), boxes.target.reshape(-1, 4)))
        own = torch.arange(n, device=device).repeat_interleave(boxes.num)
        src = torch.cat((own, pair_sources(boxes.source_is_pair, paired).reshape(-1)))
        ref = torch.stack([
            TF.resized_crop(frames[i], y1, x1, y2 - y1, x2 - x1, [size, size], antialias=True)
            for i, (x1, y1, x2, y2) in zip(src.tolist(), all_boxes.long().tolist(), strict=True)
        ])  # fmt: skip
        side = torch.maximum(all_boxes[:, 2] - all_boxes[:, 0], all_boxes[:, 3] - all_boxes[:, 1])
        up = side <= size  # upsampled (or kept) on both axes; the rest is shrunk on at least one axis
        d = (old - new).abs().amax(dim=1)  # (crops, size, size), max over channels
        inner = d[:, 3:-3, 3:-3].flatten(1).amax(1)
        whole = d.flatten(1).amax(1)
        diffs.append((name, up, whole, inner, (new - ref).abs().max().item()))
    print(
        "\nmax |roi_align - resized_crop| per pixel (images in [0, 1]); last column: resized_crop vs torchvision loop"
    )
    print("| shape | upsampled crops | whole crop | outer 3 px excluded | shrunk crops | whole crop | "
          "outer 3 px excluded | vs torchvision |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, up, whole, inner, ref_diff in diffs:

        def mx(t: torch.Tensor) -> str:
            return f"{t.max().item():.4f}" if t.numel() else "-"

        print(
            f"| {name} | {int(up.sum())} | {mx(whole[up])} | {mx(inner[up])} | {int((~up).sum())} | "
            f"{mx(whole[~up])} | {mx(inner[~up])} | {ref_diff:.1e} |"
        )


if __name__ == "__main__":
    main()
