"""The full-resolution dense loss alone, eager vs torch.compile: how much of its memory traffic fusion removes.

The roofline (poodle.engine.roofline) puts 143 of the 215 ms eager bound of the full step (H200, 8 pairs) in
`chunked_dense_loss`'s elementwise passes. This times that function (forward + backward, the default chunk of 2
images) on the given device, eager and compiled, on the same inputs, and checks that both give the same loss and
gradient.

    PYTHONPATH=src python benchmarks/dense_loss_compile.py                       # CPU: 4 images, 256 x 512
    PYTHONPATH=src python benchmarks/dense_loss_compile.py --device cuda --images 16 --size 512 1024
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_step, when run as a script
from poodle.config import load_config  # noqa: E402
from poodle.data.augment import sample_dense_geometry  # noqa: E402
from poodle.objective.dense import chunked_dense_loss  # noqa: E402
from train_step import smooth_flow  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=4, help="2N: images per branch")
    ap.add_argument("--size", type=int, nargs=2, default=[256, 512], help="full resolution H W")
    ap.add_argument("--channels", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--resample", choices=["sequential", "composed"], default="sequential",
                    help="objective.dense_resample: how the stride-8 maps reach full resolution")  # fmt: skip
    ap.add_argument("--json", default=None, help="write the figures to this JSON file")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    cfg = load_config("poodle_bdd100k")
    o = cfg.objective
    b, (h, w), c = args.images, args.size, args.channels
    g = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # the networks' output dtype
    online = torch.randn(b, c, h // 8, w // 8, generator=g).to(device, dtype).requires_grad_()
    target = torch.randn(b, c, h // 8, w // 8, generator=g).to(device, dtype)
    flow = smooth_flow(b, h, w, g).to(device)
    online_geo = sample_dense_geometry(b, (h, w), cfg.augment, device, torch.Generator(device).manual_seed(1))
    target_geo = sample_dense_geometry(b, (h, w), cfg.augment, device, torch.Generator(device).manual_seed(2))

    def loss_and_grad(fn) -> tuple[float, torch.Tensor]:
        online.grad = None
        loss, _ = fn(online, target, flow, -flow, online_geo, target_geo, o.occlusion_alpha1, o.occlusion_alpha2,
                     o.target_order, chunk=o.dense_chunk, resample=args.resample)  # fmt: skip
        loss.backward()
        return loss, online.grad

    def timed(fn) -> tuple[float, float, torch.Tensor]:
        t0 = time.perf_counter()
        loss, grad = loss_and_grad(fn)  # first call: compilation for the compiled one
        first = time.perf_counter() - t0
        times = []
        for _ in range(args.steps):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            loss, grad = loss_and_grad(fn)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        return first, sorted(times)[len(times) // 2], float(loss), grad.clone()

    _, eager_s, eager_loss, eager_grad = timed(chunked_dense_loss)
    compile_s, compiled_s, compiled_loss, compiled_grad = timed(torch.compile(chunked_dense_loss))
    cos = torch.nn.functional.cosine_similarity(eager_grad.flatten().double(), compiled_grad.flatten().double(), 0)
    print(f"chunked_dense_loss ({args.resample}) fwd+bwd on {device}: {b} images, {c} channels, {h} x {w}, "
          f"chunk {o.dense_chunk}, maps {dtype}, torch {torch.__version__}")  # fmt: skip
    print(f"  eager     {1e3 * eager_s:9.1f} ms")
    print(f"  compiled  {1e3 * compiled_s:9.1f} ms  ({eager_s / compiled_s:.2f}x; compiling took {compile_s:.0f} s)")
    print(f"  loss {eager_loss:.6f} vs {compiled_loss:.6f}; gradient cosine {cos.item():.6f}")
    if args.json:
        figures = {"images": b, "size": [h, w], "channels": c, "resample": args.resample, "eager_s": eager_s,
                   "compiled_s": compiled_s, "compile_s": compile_s, "loss": [eager_loss, compiled_loss],
                   "grad_cosine": cos.item()}  # fmt: skip
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0 if abs(eager_loss - compiled_loss) <= 1e-3 * abs(eager_loss) and cos > 0.999 else 1


if __name__ == "__main__":
    sys.exit(main())
