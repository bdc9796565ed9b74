"""What the release-FlowE switches change, measured on SynthDrive pairs with exact ground-truth flow.

    PYTHONPATH=src python benchmarks/flowe_switches.py [--pairs 8] [--dt 15] [--resolution 256x512]

Each pair is used in both directions (as the objective does). Printed, one block per switch:
- occlusion tests (`objective.occlusion`): share of pixels each test calls occluded, and its precision / recall
  against the renderer's true occlusion (a point of frame t not visible in frame t + dt), on in-frame pixels;
- the out-of-frame mask (`objective.mask_out_of_frame`): share of pixels whose flow leaves the frame, and the loss
  mask fraction of PooDLe's and FlowE's mask combinations;
- the warp convention (`objective.warp_convention`): the dense loss with image pixels as the feature maps (ImageNet
  normalised RGB, at full resolution and average-pooled to stride 8 as the heads' maps are), exact vs release warp
  (same masks: only the sampling positions differ);
- the target's valid mask (`objective.warp_target_valid`): mask fraction and loss with the affine + flip of the
  dense branch, carried along the flow vs unwarped;
- the blur kernel (`augment.blur_kernel`): largest pixel difference between the 51 x 51 kernel and the 53 x 105 one
  on a 512 x 1024 frame at the sigma range's ends;
- `optim.min_lr` and `objective.dense_eps`: the LR where the release stops (epoch 100 of 300) and the loss change.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
import torch.nn.functional as F

from poodle.config import AugmentConfig, load_config
from poodle.data.augment import normalize, photometric, sample_dense_geometry
from poodle.data.flow import absolute_occlusion_mask, in_bounds_mask, occlusion_mask
from poodle.data.synthdrive import SynthDriveSequence
from poodle.model.schedules import cosine_schedule
from poodle.objective.dense import chunked_dense_loss


def _pairs(n: int, dt: int, h: int, w: int):
    """(frames a, frames b, flow a->b, flow b->a, true occlusion of a in b), both directions stacked: (2n, ...)."""
    fa, fb, fab, fba, occ = [], [], [], [], []
    for i in range(n):
        seq = SynthDriveSequence(seed=1, index=i, resolution=(h, w))
        t = (13 * i) % 60
        for s, e in ((t, t + dt), (t + dt, t)):
            fa.append(torch.from_numpy(seq.frame(s)).permute(2, 0, 1))
            fb.append(torch.from_numpy(seq.frame(e)).permute(2, 0, 1))
            fab.append(torch.from_numpy(seq.flow(s, e)).permute(2, 0, 1))
            fba.append(torch.from_numpy(seq.flow(e, s)).permute(2, 0, 1))
            occ.append(torch.from_numpy(seq.occlusion(s, e)))
    stack = torch.stack
    return stack(fa), stack(fb), stack(fab).float(), stack(fba).float(), stack(occ)[:, None]


def _pr(pred: torch.Tensor, truth: torch.Tensor, where: torch.Tensor) -> tuple[float, float]:
    p, t = pred & where, truth & where
    tp = (p & t).sum().item()
    return tp / max(p.sum().item(), 1), tp / max(t.sum().item(), 1)


def _loss(online, target, fw, bw, geo, **kw) -> tuple[float, float]:
    with torch.no_grad():
        loss, frac = chunked_dense_loss(online, target, fw, bw, geo, geo, chunk=4, **kw)
    return loss.item(), frac.item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--dt", type=int, default=15)
    ap.add_argument("--resolution", default="256x512")
    args = ap.parse_args()
    h, w = (int(v) for v in args.resolution.split("x"))
    torch.manual_seed(0)
    a, b, fw, bw, true_occ = _pairs(args.pairs, args.dt, h, w)
    n = a.shape[0]
    print(f"SynthDrive, {args.pairs} pairs x 2 directions, dt = {args.dt} frames, {h} x {w}, ground-truth flow")
    median = fw.norm(dim=1).median().item()
    print(f"median |flow| {median:.1f} px")

    inside = in_bounds_mask(fw)
    dd = occlusion_mask(fw, bw, 0.1, 0.5)
    ab = absolute_occlusion_mask(fw, bw, 3.54)
    print("\n[objective.occlusion] share of pixels occluded; precision / recall vs true occlusion, in-frame pixels")
    print(f"  true occlusion (in frame)     {(true_occ & inside).float().mean():.3f}")
    for name, occ in (("ddflow (a1 0.1, a2 0.5)", dd), ("absolute (3.54 px)", ab)):
        p, r = _pr(occ, true_occ, inside)
        print(f"  {name:28s}  all {occ.float().mean():.3f}  in frame {(occ & inside).float().mean():.3f}"
              f"  precision {p:.3f}  recall {r:.3f}")  # fmt: skip
    print("\n[objective.mask_out_of_frame] share of pixels in the loss mask (no affine)")
    print(f"  flow leaves the frame          {1 - inside.float().mean():.3f}")
    print(f"  absolute test keeps of those   {(~ab & ~inside).float().sum() / (~inside).float().sum():.3f}")
    for name, keep in (
        ("PooDLe: in frame & ~ddflow", inside & ~dd),
        ("in frame & ~absolute", inside & ~ab),
        ("FlowE: ~absolute", ~ab),
    ):
        print(f"  {name:30s} {keep.float().mean():.3f}")

    print("\n[objective.warp_convention] dense loss, image pixels as features (PooDLe mask; FlowE mask)")
    ident = sample_dense_geometry(n, (h, w), AugmentConfig(affine=False, hflip_p=0.0))
    pix_a, pix_b = normalize(a.float() / 255), normalize(b.float() / 255)
    flowe = {"occlusion": "absolute", "mask_out_of_frame": False}
    for label, (oa, ob) in (("full resolution", (pix_a, pix_b)), ("stride 8", (F.avg_pool2d(pix_a, 8),
                                                                            F.avg_pool2d(pix_b, 8)))):  # fmt: skip
        row = []
        for masks in ({}, flowe):
            exact, _ = _loss(oa, ob, fw, bw, ident, warp_convention="exact", **masks)
            release, _ = _loss(oa, ob, fw, bw, ident, warp_convention="release", **masks)
            row.append(f"exact {exact:.4f} release {release:.4f} ({100 * (release / exact - 1):+.1f} %)")
        print(f"  {label:16s} {row[0]};  {row[1]}")

    print("\n[objective.warp_target_valid] with the dense affine + flip (seeded), stride-8 pixel features")
    geo = sample_dense_geometry(n, (h, w), AugmentConfig(), generator=torch.Generator().manual_seed(0))
    oa, ob = geo.apply(F.avg_pool2d(pix_a, 8)), geo.apply(F.avg_pool2d(pix_b, 8))
    for masks_name, masks in (("PooDLe masks", {}), ("FlowE masks", flowe)):
        warped = _loss(oa, ob, fw, bw, geo, warp_target_valid=True, **masks)
        flat = _loss(oa, ob, fw, bw, geo, warp_target_valid=False, **masks)
        print(f"  {masks_name:13s} carried along the flow: loss {warped[0]:.4f} mask {warped[1]:.3f};  "
              f"unwarped (release): loss {flat[0]:.4f} mask {flat[1]:.3f}")  # fmt: skip

    print("\n[objective.dense_eps] 1e-7 vs 1e-6 (PooDLe masks, full-resolution pixels)")
    l7, _ = _loss(pix_a, pix_b, fw, bw, ident, eps=1e-7)
    l6, _ = _loss(pix_a, pix_b, fw, bw, ident, eps=1e-6)
    print(f"  {l7:.9f} vs {l6:.9f} (difference {l6 - l7:.2e})")

    print("\n[augment.blur_kernel] 51 x 51 vs 53 x 105 on a 512 x 1024 SynthDrive frame: max |difference| (0-1 scale)")
    frame = torch.from_numpy(SynthDriveSequence(seed=1, index=0, resolution=(512, 1024)).frame(0)).permute(2, 0, 1)
    frame = frame[None].float() / 255
    base = AugmentConfig(color_jitter_p=0.0, grayscale_p=0.0, blur_p=1.0)
    for sigma in (0.1, 1.0, 2.0):
        cfg = dataclasses.replace(base, blur_sigma=(sigma, sigma))
        frac = photometric(frame, cfg, torch.Generator().manual_seed(0), normalize=False)
        fixed = photometric(frame, dataclasses.replace(cfg, blur_kernel=51), torch.Generator().manual_seed(0),
                            normalize=False)  # fmt: skip
        print(f"  sigma {sigma}: {(frac - fixed).abs().max().item():.2e}")

    print("\n[optim.min_lr] LR of the 300-epoch cosine (warm-up 2) at the release's stop, epoch 100")
    steps_per_epoch = 1000
    for min_lr in (0.0, 1e-4):
        lr = cosine_schedule(5e-4, min_lr, 300 * steps_per_epoch, warmup_steps=2 * steps_per_epoch)
        print(f"  min_lr {min_lr:g}: LR at epoch 100 {lr[100 * steps_per_epoch]:.3e}, "
              f"mean LR over epochs 0-100 {lr[: 100 * steps_per_epoch].mean():.3e}")  # fmt: skip

    cfg = load_config("flowe_bdd100k")
    hidden = cfg.model.proj_hidden_dim
    print(f"\n[model.head_bias] biases dropped: {3 * hidden} parameters (projector, predictor, target projector); "
          "train-mode output unchanged (BN removes a constant), see tests/test_model.py")  # fmt: skip
    print(f"[flow.iters] {cfg.flow.iters} (FlowE) vs 24 (PooDLe): not measured here (needs RAFT weights)")


if __name__ == "__main__":
    main()
