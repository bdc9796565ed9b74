"""`poodle flow`: compute and visualise optical flow for a frame pair; benchmark estimators on SynthDrive.

    poodle flow --video clip.mp4 --t 0 --dt 15 --backend dis --out flow_out
    poodle flow --frames a.png b.png --backend raft_large --weights raft_large_C_T_V1-22a6c225.pth
    poodle flow --benchmark-synthdrive --pairs 16 --resolution 256x512 --dt 1 8 15 --trained runs/flow_sd
    poodle flow train --out runs/flow_sd                  (label-free training: `poodle flow train --help`)

The pair mode writes ``flow.png`` (frame a | frame b | flow a->b colour | occlusion mask a->b) and ``flow.npz``
(``flow_ab``, ``flow_ba`` as (2, H, W) float32) and prints flow magnitude statistics. The benchmark prints a Markdown
table of end-point error against SynthDrive's exact flow. See docs/flow.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from poodle.cli import UserError

BACKENDS = ("auto", "dis", "raft_large", "raft_small")
# Occlusion constants of the forward-backward test (DDFlow's a1 = 0.01, a2 = 0.5, as PooDLe uses).
ALPHA1, ALPHA2 = 0.1, 0.5


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", metavar="PATH", help="video file to take the frame pair from (decoded with PyAV)")
    src.add_argument("--frames", nargs=2, metavar=("A", "B"), help="two image files (same size) as the pair")
    src.add_argument(
        "--benchmark-synthdrive",
        action="store_true",
        help="report end-point error of each backend against SynthDrive's exact flow (Markdown table)",
    )
    p.add_argument("--t", type=int, default=0, help="--video: index of frame a (default: 0)")
    p.add_argument(
        "--dt", type=int, nargs="+", default=[15],
        help="frame b = frame a + dt (default: 15 = 0.5 s at 30 fps); benchmark: one table per value, e.g. --dt 1 8 15",
    )  # fmt: skip
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="flow estimator; auto = raft_large on a GPU when its weights are found, else dis. In benchmark mode "
        "auto = every backend available (dis always, RAFT when weights are found)",
    )
    p.add_argument("--weights", default="", help="local torchvision RAFT state dict (default: the torch hub cache)")
    p.add_argument(
        "--trained", action="append", default=[], metavar="PATH",
        help="benchmark: also measure a model trained by `poodle flow train` (its run folder or flow_model.pt); "
        "repeatable",
    )  # fmt: skip
    p.add_argument("--iters", type=int, default=24, help="RAFT refinement iterations (default: 24, as the paper)")
    p.add_argument("--dis-preset", choices=("ultrafast", "fast", "medium"), default="medium", help="DIS preset")
    p.add_argument("--raft-resolution", metavar="HxW", help="run RAFT at this resolution and rescale the flow")
    p.add_argument(
        "--resolution",
        metavar="HxW",
        help="resize the frames to HxW first (pair mode; default: native); SynthDrive render size (benchmark; "
        "default 256x512)",
    )
    p.add_argument("--pairs", type=int, default=8, help="benchmark: number of SynthDrive pairs (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="benchmark: SynthDrive world seed (default: 0)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="device for RAFT")
    p.add_argument("--out", default="flow_out", help="pair mode: output folder (default: flow_out)")


# --------------------------------------------------------------------------------------------------------------
# helpers


def _parse_hw(text: str | None, flag: str) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"{flag} must look like 256x512 (HxW), got {text!r}") from None
    if h < 8 or w < 8:
        raise UserError(f"{flag} must be at least 8x8, got {text!r}")
    return h, w


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    return torch.device(name)


def _raft_available(size: str, weights: str) -> bool:
    from poodle.data.optical_flow import FlowWeightsError, _resolve_raft_weights

    try:
        _resolve_raft_weights(size, weights)
    except (FlowWeightsError, ValueError):
        return False
    return True


def _build(backend: str, args: argparse.Namespace, device: torch.device):
    from poodle.data.optical_flow import DISFlow, FlowWeightsError, RaftFlow

    if backend == "dis":
        return DISFlow(args.dis_preset)
    try:
        est = RaftFlow(
            backend.removeprefix("raft_"),
            weights=args.weights,
            iters=args.iters,
            resolution=_parse_hw(args.raft_resolution, "--raft-resolution"),
        )
    except FlowWeightsError as e:
        raise UserError(str(e)) from None
    except ValueError as e:
        raise UserError(str(e)) from None
    return est.to(device)


def _build_trained(path: str, args: argparse.Namespace, device: torch.device):
    """(row name, RaftFlow) for a model written by `poodle flow train` (run folder or its flow_model.pt)."""
    from poodle.data.optical_flow import FlowWeightsError, RaftFlow, raft_size_of

    try:
        size = raft_size_of(path)
        est = RaftFlow(size, weights=path, iters=args.iters,
                       resolution=_parse_hw(args.raft_resolution, "--raft-resolution"))  # fmt: skip
    except FlowWeightsError as e:
        raise UserError(f"--trained {path}: {e}") from None
    return f"trained raft_{size} {Path(path).name} ({device.type}, {args.iters} iters)", est.to(device)


def _resolve_backend(args: argparse.Namespace, device: torch.device) -> str:
    if args.backend != "auto":
        return args.backend
    if device.type == "cuda" and _raft_available("large", args.weights):
        return "raft_large"
    return "dis"


def _read_video_pair(path: Path, t: int, dt: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames t and t + dt as (H, W, 3) uint8 RGB."""
    if not path.is_file():
        raise UserError(f"--video: no such file: {path}")
    if t < 0 or dt < 1:
        raise UserError(f"--t must be >= 0 and --dt >= 1, got t={t}, dt={dt}")
    want = (t, t + dt)
    try:
        from poodle.data.video import VideoDecodeError, read_frames  # the seeking reader
    except ImportError:  # keep working if the reader module is absent: a plain decode loop below
        read_frames = None
    if read_frames is not None:
        try:
            frames = read_frames(path, list(want))
        except VideoDecodeError as e:
            raise UserError(f"--video: cannot read frames {t} and {t + dt}: {e}") from None
        return frames[0], frames[1]
    import av

    got: dict[int, np.ndarray] = {}
    try:
        with av.open(str(path)) as container:
            # Plain decode loop from the start: fine for a one-off visualisation.
            for i, frame in enumerate(container.decode(video=0)):
                if i in want:
                    got[i] = frame.to_ndarray(format="rgb24")
                if i >= want[1]:
                    break
    except av.FFmpegError as e:
        raise UserError(f"--video {path}: cannot decode: {e}") from None
    if len(got) < 2:
        raise UserError(f"--video {path}: has fewer than {want[1] + 1} frames (need frames {t} and {t + dt})")
    return got[want[0]], got[want[1]]


def _read_image(path: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (FileNotFoundError, UnidentifiedImageError, OSError) as e:
        raise UserError(f"--frames: cannot read image {path}: {e}") from None


def _to_batch(img: np.ndarray, size: tuple[int, int] | None) -> torch.Tensor:
    x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0)  # (1, 3, H, W) uint8
    if size is not None and tuple(x.shape[-2:]) != size:
        x = torch.nn.functional.interpolate(x.float(), size=size, mode="bilinear", antialias=True)
        x = x.round().clamp(0, 255).to(torch.uint8)
    return x


def _magnitude_stats(flow: torch.Tensor) -> str:
    mag = flow.float().norm(dim=1).flatten()
    q = torch.quantile(mag[:: max(1, mag.numel() // 1_000_000)], torch.tensor([0.5, 0.95]))  # quantile caps at 16M
    return f"mean {mag.mean():.2f}  median {q[0]:.2f}  p95 {q[1]:.2f}  max {mag.max():.2f} px"


# --------------------------------------------------------------------------------------------------------------
# pair mode


def _run_pair(args: argparse.Namespace) -> int:
    from PIL import Image

    from poodle.data.flow import flow_to_rgb, in_bounds_mask, occlusion_mask

    size = _parse_hw(args.resolution, "--resolution")
    if args.video:
        img_a, img_b = _read_video_pair(Path(args.video), args.t, args.dt[0])
        what = f"{args.video} frames {args.t} and {args.t + args.dt[0]}"
    else:
        img_a, img_b = _read_image(args.frames[0]), _read_image(args.frames[1])
        what = f"{args.frames[0]} -> {args.frames[1]}"
    if size is None and img_a.shape != img_b.shape:
        raise UserError(f"frames differ in size: {img_a.shape[:2]} vs {img_b.shape[:2]} (pass --resolution HxW)")
    a, b = _to_batch(img_a, size), _to_batch(img_b, size)

    device = _device(args.device)
    backend = _resolve_backend(args, device)
    est = _build(backend, args, device)
    t0 = time.perf_counter()
    flow_ab, flow_ba = est.bidirectional(a, b)
    elapsed = time.perf_counter() - t0

    occ = occlusion_mask(flow_ab, flow_ba, ALPHA1, ALPHA2)[0, 0]
    outside = ~in_bounds_mask(flow_ab)[0, 0]
    # Mask panel: black = visible, grey = leaves the frame, white = occluded (forward-backward check).
    mask = torch.zeros(occ.shape, dtype=torch.uint8)
    mask[outside] = 128
    mask[occ] = 255
    panels = [a[0], b[0], flow_to_rgb(flow_ab)[0], mask.expand(3, -1, -1)]
    strip = torch.cat(panels, dim=2).permute(1, 2, 0).numpy()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(strip).save(out / "flow.png")
    np.savez_compressed(out / "flow.npz", flow_ab=flow_ab[0].numpy(), flow_ba=flow_ba[0].numpy())

    h, w = a.shape[-2:]
    print(f"{what}: {h}x{w}, backend {est.name}, both directions in {elapsed:.2f} s")
    print(f"  |flow a->b|: {_magnitude_stats(flow_ab)}")
    print(f"  |flow b->a|: {_magnitude_stats(flow_ba)}")
    print(
        f"  a->b occluded (fw-bw, alpha1={ALPHA1}, alpha2={ALPHA2}): {100 * occ.float().mean():.1f} %, "
        f"leaving the frame: {100 * outside.float().mean():.1f} %"
    )
    print(f"  wrote {out / 'flow.png'} (frame a | frame b | flow a->b | occlusion) and {out / 'flow.npz'}")
    return 0


# --------------------------------------------------------------------------------------------------------------
# benchmark mode


def _synthdrive_pairs(n: int, size: tuple[int, int], dt: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """n pairs (one per SynthDrive sequence, frames 0 and dt) with exact flow and occlusion in both directions."""
    try:
        from poodle.data.synthdrive import SynthDriveError, SynthDriveSequence
    except ImportError as e:
        raise UserError(f"SynthDrive is not available in this installation: {e}") from None
    try:
        SynthDriveSequence(seed=seed, index=0, resolution=size, fps=30)
    except SynthDriveError as e:
        raise UserError(f"--resolution: {e}") from None

    def flow(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)

    def occ(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(x, dtype=bool)).unsqueeze(0)

    pairs = []
    for i in range(n):
        seq = SynthDriveSequence(seed=seed, index=i, resolution=size, fps=30)
        t0, t1 = 0, dt
        pairs.append(
            {
                "a": _to_batch(seq.frame(t0), None),
                "b": _to_batch(seq.frame(t1), None),
                "flow_ab": flow(seq.flow(t0, t1)),
                "flow_ba": flow(seq.flow(t1, t0)),
                "occ_ab": occ(seq.occlusion(t0, t1)),
                "occ_ba": occ(seq.occlusion(t1, t0)),
            }
        )
    return pairs


def benchmark(estimators: dict, pairs: list[dict[str, torch.Tensor]]) -> list[dict[str, float | str]]:
    """EPE of each estimator over both directions of every pair; pairs/s counts one bidirectional call per pair.

    ``estimators`` maps a row name to a FlowEstimator, or to ``None`` for the zero-flow reference row. Pixels whose
    true target lies outside the other frame are left out of every statistic (their ground truth has no bound near
    the camera plane and would dominate the mean); occluded pixels that stay in the frame count in "all".
    """
    from poodle.data.flow import in_bounds_mask, occlusion_mask
    from poodle.data.optical_flow import EPEMeter

    rows = []
    for name, est in estimators.items():
        meter = EPEMeter()
        occ_agree = occ_union = occ_inter = occ_pixels = 0
        if est is not None:
            est.bidirectional(pairs[0]["a"], pairs[0]["b"])  # warm-up (allocator, cuDNN autotune, OpenCV init)
        seconds = 0.0
        for p in pairs:
            t0 = time.perf_counter()
            if est is None:
                ab, ba = torch.zeros_like(p["flow_ab"]), torch.zeros_like(p["flow_ba"])
            else:
                ab, ba = est.bidirectional(p["a"], p["b"])
            seconds += time.perf_counter() - t0  # bidirectional returns CPU tensors here, so GPU work is synced
            meter.update(ab, p["flow_ab"], p["occ_ab"], in_bounds_mask(p["flow_ab"]))
            meter.update(ba, p["flow_ba"], p["occ_ba"], in_bounds_mask(p["flow_ba"]))
            # Occlusion agreement: the forward-backward mask pretraining would use, against the true occlusion, over
            # the pixels whose true target stays in the frame.
            for fw, bw, gt_flow, gt_occ in ((ab, ba, p["flow_ab"], p["occ_ab"]), (ba, ab, p["flow_ba"], p["occ_ba"])):
                valid = in_bounds_mask(gt_flow)[:, 0]
                pred = occlusion_mask(fw, bw, ALPHA1, ALPHA2)[:, 0][valid]
                true = gt_occ.reshape(valid.shape)[valid]
                occ_agree += int((pred == true).sum())
                occ_inter += int((pred & true).sum())
                occ_union += int((pred | true).sum())
                occ_pixels += int(valid.sum())
        row: dict[str, float | str] = {"backend": name, **meter.summary()}
        row["occ_agreement"] = 100.0 * occ_agree / max(occ_pixels, 1)
        row["occ_iou"] = 100.0 * occ_inter / occ_union if occ_union else float("nan")
        row["pairs_per_s"] = float("nan") if est is None else len(pairs) / max(seconds, 1e-9)
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, float | str]]) -> str:
    lines = [
        "| backend | EPE all (px) | EPE non-occluded (px) | EPE > 3 px (%) | Fl-all (%) | occlusion agreement (%) "
        "| occlusion IoU (%) | pairs/s (both directions) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        speed = "-" if r["pairs_per_s"] != r["pairs_per_s"] else f"{r['pairs_per_s']:.2f}"
        iou = "-" if r["occ_iou"] != r["occ_iou"] else f"{r['occ_iou']:.1f}"
        lines.append(f"| {r['backend']} | {r['epe']:.2f} | {r['epe_noc']:.2f} | {r['px3']:.1f} | {r['fl_all']:.1f} | "
                     f"{r['occ_agreement']:.1f} | {iou} | {speed} |")  # fmt: skip
    if rows:
        lines.append(
            f"\n'all' = pixels whose true target is inside the other frame ({100 - rows[0]['excluded']:.1f} % of "
            "pixels; occluded ones included); 'non-occluded' = those also visible in the other frame. Fl-all = "
            "EPE > 3 px and > 5 % of the true motion. Occlusion: the forward-backward mask (alpha1 "
            f"{ALPHA1}, alpha2 {ALPHA2}) against the true occlusion."
        )
    return "\n".join(lines)


def _run_benchmark(args: argparse.Namespace) -> int:
    size = _parse_hw(args.resolution, "--resolution") or (256, 512)
    if args.pairs < 1:
        raise UserError(f"--pairs must be >= 1, got {args.pairs}")
    if min(args.dt) < 1:
        raise UserError(f"--dt must be >= 1, got {min(args.dt)}")
    device = _device(args.device)
    wanted = ["dis", "raft_large", "raft_small"] if args.backend == "auto" else [args.backend]
    estimators: dict = {"zero flow (reference)": None}
    skipped = []
    for backend in wanted:
        if backend.startswith("raft_") and args.backend == "auto" and not _raft_available(backend[5:], args.weights):
            skipped.append(backend)
            continue
        est = _build(backend, args, device)
        estimators[est.name if backend == "dis" else f"{backend} ({device.type}, {args.iters} iters)"] = est
    for path in args.trained:
        name, est = _build_trained(path, args, device)
        estimators[name] = est

    for dt in args.dt:
        t0 = time.perf_counter()
        pairs = _synthdrive_pairs(args.pairs, size, dt, args.seed)
        print(
            f"SynthDrive: {args.pairs} pairs (seed {args.seed}, frames 0 and {dt} at 30 fps), {size[0]}x{size[1]}, "
            f"rendered in {time.perf_counter() - t0:.1f} s; EPE over both directions of every pair\n",
            flush=True,
        )
        print(format_table(benchmark(estimators, pairs)) + "\n", flush=True)
    for backend in skipped:
        from poodle.data.optical_flow import raft_weights_path

        print(f"\n{backend}: skipped, weights not found ({raft_weights_path(backend[5:])}; or --weights FILE)")
    return 0


def run(args: argparse.Namespace) -> int:
    _parse_hw(args.raft_resolution, "--raft-resolution")  # validate even when the chosen backend ignores it
    if args.iters < 1:
        raise UserError(f"--iters must be >= 1, got {args.iters}")
    if args.benchmark_synthdrive:
        return _run_benchmark(args)
    return _run_pair(args)
