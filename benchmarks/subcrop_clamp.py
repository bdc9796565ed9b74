"""The sampler's two centre clamps (`subcrops.clamp`) on driving flow: fallback rate and boxes past the edge.

    PYTHONPATH=src python benchmarks/subcrop_clamp.py [--pairs 48] [--resolution 128x256] [--draws 4]

SynthDrive ground-truth flow between frames dt apart, dt ~ U{15..30} (the full recipe) or U{8..15} (the demo), in
both directions as the training batch uses both orderings; default subcrop settings (K = 6, area [0.05, 0.3],
jitter 0.10, 5 tries). SynthDrive gives a flow of 0 to points that pass behind the camera (12 % of the pixels at
dt 15-30, mostly road at the bottom): "zero" keeps that (what training on SynthDrive sees; a centre there is always
accepted), "out" gives them a flow out of the frame (their content has left the view, as for real flow).
Per mode, with the same random draws: the share of pairs that fell back to a same-frame pair, the share of online
boxes that run past the image edge, the share of those boxes' area outside the image (zero padding), and the same
share over all online boxes.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from poodle.config import SubcropConfig
from poodle.data.subcrops import flow_aware_subcrops
from poodle.data.synthdrive import SynthDriveSequence


def synthdrive_flows(
    pairs: int, hw: tuple[int, int], dt_range: tuple[int, int], seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """(2 pairs, 2, H, W) flows, forward t -> t + dt then backward, and (2 pairs, H, W) bool: the point passes
    behind the camera (SynthDrive's flow is 0 there)."""
    g = torch.Generator().manual_seed(seed)
    flows, behind = [[], []], [[], []]
    for i in range(pairs):
        seq = SynthDriveSequence(seed=seed, index=i, resolution=hw)
        dt = int(torch.randint(dt_range[0], dt_range[1] + 1, (1,), generator=g))
        t = int(torch.randint(0, 300 - dt, (1,), generator=g))
        for d, (a, b) in enumerate(((t, t + dt), (t + dt, t))):
            flows[d].append(torch.from_numpy(seq.flow(a, b)).permute(2, 0, 1))
            behind[d].append(behind_camera(flows[d][-1], torch.from_numpy(seq.occlusion(a, b))))
    return torch.stack(flows[0] + flows[1]), torch.stack(behind[0] + behind[1])


def behind_camera(flow: torch.Tensor, occluded: torch.Tensor) -> torch.Tensor:
    """(..., H, W) bool: points SynthDrive gives a flow of 0 because they pass behind the camera (occluded, zero)."""
    return occluded & (flow == 0).all(-3)


def send_out_of_frame(flow: torch.Tensor, behind: torch.Tensor) -> torch.Tensor:
    """`flow` (N, 2, H, W) with the `behind` (N, H, W) points sent far out of the frame, as real flow has them."""
    return flow.masked_fill(behind[:, None], 10.0 * max(flow.shape[-2:]))


def clamp_stats(flow: torch.Tensor, cfg: SubcropConfig, draws: int) -> dict[str, float]:
    h, w = flow.shape[-2:]
    fallback, past, padded, padded_all = [], [], [], []
    for d in range(draws):
        boxes = flow_aware_subcrops(flow, cfg, generator=torch.Generator().manual_seed(d))
        x1, y1, x2, y2 = boxes.online.reshape(-1, 4).unbind(-1)
        area = (x2 - x1) * (y2 - y1)
        inside = (x2.clamp(max=w) - x1.clamp(min=0)) * (y2.clamp(max=h) - y1.clamp(min=0))
        out_share = 1 - inside / area
        over = (x1 < 0) | (y1 < 0) | (x2 > w) | (y2 > h)
        fallback.append((~boxes.source_is_pair).float().mean())
        past.append(over.float().mean())
        padded.append(out_share[over].mean() if over.any() else torch.tensor(0.0))
        padded_all.append(out_share.mean())
    mean = lambda v: float(torch.stack(v).mean())  # noqa: E731
    return {"fallback": mean(fallback), "past": mean(past), "padded": mean(padded), "padded_all": mean(padded_all)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=48)
    ap.add_argument("--resolution", default="128x256")
    ap.add_argument("--draws", type=int, default=4, help="sampler draws per mode (different generator seeds)")
    ap.add_argument("--jitter", type=float, default=0.10)
    args = ap.parse_args()
    hw = tuple(int(v) for v in args.resolution.split("x"))
    boxes = 2 * args.pairs * SubcropConfig().num * args.draws
    print(
        f"SynthDrive seed 1, {args.pairs} pairs at {hw[0]}x{hw[1]} (both directions), jitter {args.jitter}; "
        f"{boxes} online boxes per row over {args.draws} draws\n"
    )
    print("| dt | behind camera | subcrops.clamp | same-frame fallback | online boxes past the edge | "
          "their area outside | all boxes' area outside |")  # fmt: skip
    print("|---|---|---|---:|---:|---:|---:|")
    for dt_range in ((15, 30), (8, 15)):
        flow, behind = synthdrive_flows(args.pairs, hw, dt_range)
        for convention in ("zero", "out"):
            f = flow if convention == "zero" else send_out_of_frame(flow, behind)
            for mode in ("inside", "release"):
                cfg = dataclasses.replace(SubcropConfig(), clamp=mode, jitter=args.jitter)
                s = clamp_stats(f, cfg, args.draws)
                print(
                    f"| {dt_range[0]}-{dt_range[1]} | {convention} ({behind.float().mean():.0%} px) | {mode} | "
                    f"{s['fallback']:.1%} | {s['past']:.1%} | {s['padded']:.1%} | {s['padded_all']:.1%} |"
                )


if __name__ == "__main__":
    main()
