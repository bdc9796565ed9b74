"""Correctness of the fast step on a device: losses and gradients of ours against the release-style fp32 reference.

Same weights, inputs and random draws on every path (a small ResNet-18 config, so it runs anywhere):
  ours fp32 vs reference fp32      structure (batched crops vs the per-crop resized_crop loop, chunked vs unchunked
                                   dense loss): must agree to float rounding
  ours bf16 vs ours fp32           autocast around the networks (channels_last too on CUDA): bf16 tolerance
  ours bf16 compiled vs eager      torch.compile (--compile): bf16 tolerance
  plain ResNet-18, bf16 vs fp32    cross-entropy on the same images: what bf16 alone does to a gradient at this
                                   batch size (no bound; the yardstick for the bf16 rows)
Prints one row per comparison (loss difference, gradient cosine, gradient norm ratio) and exits 1 if a bound is
broken. On CPU the bf16 rows use CPU autocast (tests/test_fast_path.py does the same with tighter control).

    PYTHONPATH=src python benchmarks/fast_path_check.py --device cuda --compile
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # reference_step, when run as a script
from poodle.config import load_config  # noqa: E402
from poodle.objective import PairBatch, PooDLeObjective  # noqa: E402
from reference_step import reference_forward, resized_crop_one  # noqa: E402
from train_step import smooth_flow  # noqa: E402

SMALL = ["model.arch=resnet18", "model.proj_hidden_dim=256", "model.proj_out_dim=64", "subcrops.size=64"]
# (loss relative difference, gradient cosine, |norm ratio - 1|) bounds per comparison
BOUNDS = {"structure": (1e-4, 0.9999, 1e-3), "bf16": (2e-2, 0.8, 0.1), "compile": (2e-2, 0.8, 0.1),
          "floor": (float("inf"), -1.0, float("inf"))}  # fmt: skip


def make_batch(n: int, h: int, w: int, device: torch.device) -> PairBatch:
    g = torch.Generator().manual_seed(0)
    flow = smooth_flow(n, h, w, g)
    return PairBatch(torch.rand(n, 3, h, w, generator=g), torch.rand(n, 3, h, w, generator=g), flow, -flow).to(device)


def run(objective: PooDLeObjective, forward, batch: PairBatch, device: torch.device):
    objective.zero_grad(set_to_none=True)
    generator = torch.Generator(device=device).manual_seed(3)
    out = forward(batch, generator)
    out["loss"].backward()
    grads = torch.cat([p.grad.flatten().float() for p in objective.networks.parameters() if p.grad is not None])
    return float(out["loss"].detach()), grads


def compare(name: str, kind: str, a, b) -> dict:
    (loss_a, grad_a), (loss_b, grad_b) = a, b
    row = {
        "comparison": name,
        "loss": loss_a,
        "loss_ref": loss_b,
        "loss_rel_diff": abs(loss_a - loss_b) / abs(loss_b),
        "grad_cosine": torch.nn.functional.cosine_similarity(grad_a.double(), grad_b.double(), dim=0).item(),
        "grad_norm_ratio": (grad_a.norm() / grad_b.norm()).item(),
    }
    max_loss, min_cos, max_norm = BOUNDS[kind]
    row["ok"] = (
        row["loss_rel_diff"] <= max_loss
        and row["grad_cosine"] >= min_cos
        and abs(row["grad_norm_ratio"] - 1) <= max_norm
    )
    return row


def plain_resnet18_floor(batch: PairBatch, device: torch.device) -> dict:
    """bf16 vs fp32 gradients of a plain torchvision ResNet-18 under cross-entropy on the batch's frames."""
    import torchvision

    torch.manual_seed(0)
    fp32 = torchvision.models.resnet18(num_classes=10).to(device)
    bf16 = copy.deepcopy(fp32)
    images = torch.cat([batch.frame_a, batch.frame_b])
    labels = torch.arange(images.shape[0], device=device) % 10

    def grads(model, enabled: bool):
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled):
            logits = model(images)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        loss.backward()
        return float(loss.detach()), torch.cat([p.grad.flatten().float() for p in model.parameters()])

    return compare("plain ResNet-18 CE, bf16 vs fp32 (yardstick)", "floor", grads(bf16, True), grads(fp32, False))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--config", default="poodle_bdd100k")
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--resolution", type=int, nargs=2, default=[128, 256])
    ap.add_argument("--compile", action="store_true", help="also compare torch.compile against eager (bf16)")
    ap.add_argument("--json", default=None, help="write the rows to this JSON file")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    h, w = args.resolution
    cfg = load_config(args.config, [*SMALL, f"data.resolution=[{h},{w}]", "run.precision=fp32"])
    torch.manual_seed(0)
    fp32 = PooDLeObjective(cfg).to(device)
    batch = make_batch(args.pairs, h, w, device)

    def clone(precision: str) -> PooDLeObjective:
        m = copy.deepcopy(fp32)
        m.cfg = copy.deepcopy(cfg)
        m.cfg.run.precision = precision
        m.autocast_device_types = ("cuda", "cpu")
        if precision == "bf16" and device.type == "cuda":
            m = m.to(memory_format=torch.channels_last)
        return m

    reference = clone("fp32")
    ours_fp32 = run(fp32, fp32, batch, device)
    rows = [
        compare(
            "ours fp32 vs reference fp32",
            "structure",
            ours_fp32,
            run(reference, lambda b, g: reference_forward(reference, b, g, crop_one=resized_crop_one), batch, device),
        )
    ]
    bf16 = clone("bf16")
    ours_bf16 = run(bf16, bf16, batch, device)
    rows.append(compare("ours bf16 vs ours fp32", "bf16", ours_bf16, ours_fp32))
    rows.append(plain_resnet18_floor(batch, device))
    if args.compile:
        compiled = clone("bf16")
        forward = torch.compile(compiled)
        run(compiled, forward, batch, device)  # compile
        rows.append(compare("ours bf16 compiled vs eager", "compile", run(compiled, forward, batch, device), ours_bf16))

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"fast-path check on {device} ({name}), {args.config} + {' '.join(SMALL)}, {h}x{w}, {args.pairs} pairs")
    print("| comparison | loss | reference loss | loss rel. diff | grad cosine | grad norm ratio | ok |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['comparison']} | {r['loss']:.5f} | {r['loss_ref']:.5f} | {r['loss_rel_diff']:.2e} | "
              f"{r['grad_cosine']:.5f} | {r['grad_norm_ratio']:.4f} | {'yes' if r['ok'] else 'NO'} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
