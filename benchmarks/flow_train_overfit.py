"""Can RAFT leave zero flow on a few SynthDrive pairs? The same network and pairs, trained with the truth or with
the label-free loss: separates "the network cannot learn this" from "the loss does not lead there".

    PYTHONPATH=src python benchmarks/flow_train_overfit.py --loss supervised --steps 100
    PYTHONPATH=src python benchmarks/flow_train_overfit.py --loss unsupervised --steps 150 [loss.key=value ...]
    PYTHONPATH=src python benchmarks/flow_train_overfit.py --loss supervised --train-pairs 64 --dt 8 --steps 200

Pairs: SynthDrive sequences `--sequences` (default 2 and 3, both driving), frames 0 and `--dt`, at `--resolution`,
both directions in one batch, the same pairs every step (an overfitting test, not training). `supervised`: RAFT's
sequence loss on the exact flow (L1 over pixels whose target stays in the frame, update i of N weighted 0.8^(N-1-i)).
`unsupervised`: `poodle.flowtrain.losses.unsupervised_flow_loss` with the loss section of `--config` (default: the
CPU recipe, `flow_train_synthdrive_cpu`) and any `loss.*` overrides. Adam, global gradient-norm clip 1.0.
`--train-pairs N` trains instead on N pairs of other sequences (frame gaps 1..--dt), a new batch each step, and
still measures on the fixed pairs: generalisation rather than memorisation. Prints the zero-flow EPE, then the
EPE against the exact flow (both directions, pixels whose target stays in the frame) every 25 steps and after the
last.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from poodle.cli.synth import _resolution
from poodle.config import ConfigError
from poodle.data.flow import in_bounds_mask
from poodle.data.synthdrive import SynthDriveError, SynthDriveSequence
from poodle.flowtrain.config import load_flow_train_config
from poodle.flowtrain.losses import sequence_weights, unsupervised_flow_loss
from poodle.flowtrain.model import UnsupervisedRaft


def _chw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)


def _render_pair(index: int, t: int, dt: int, hw: tuple[int, int], supersample: int) -> tuple[torch.Tensor, ...]:
    """Frames t and t + dt of sequence `index` (1, 3, H, W) in [0, 1] and the exact flows both ways (1, 2, H, W).
    `supersample` s > 1 renders the frames at s times the resolution and area-averages them down (antialiased)."""
    seq = SynthDriveSequence(seed=0, index=index, resolution=hw, fps=30)
    big = seq if supersample == 1 else SynthDriveSequence(
        seed=0, index=index, resolution=(hw[0] * supersample, hw[1] * supersample), fps=30
    )  # fmt: skip
    a, b = (F.interpolate(_chw(big.frame(u)) / 255, size=hw, mode="area") for u in (t, t + dt))
    return a, b, _chw(seq.flow(t, t + dt)), _chw(seq.flow(t + dt, t))


def _stack(pairs: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frames a, b (N, 3, H, W) and the exact flows [a->b; b->a] (2N, 2, H, W)."""
    a, b, fw, bw = zip(*pairs)
    return torch.cat(a), torch.cat(b), torch.cat(fw + bw)


def synthdrive_pairs(
    indices: list[int], dt: int, hw: tuple[int, int], supersample: int = 1
) -> tuple[torch.Tensor, ...]:
    """The evaluation pairs: frames 0 and dt of each sequence in `indices`, laid out as :func:`_stack`."""
    return _stack([_render_pair(i, 0, dt, hw, supersample) for i in indices])


def training_pool(pairs: int, max_dt: int, hw: tuple[int, int], supersample: int) -> tuple[torch.Tensor, ...]:
    """`pairs` pairs from other sequences (indices 100 ..), t ~ U{0..59}, dt ~ U{1..max_dt}, laid out as
    :func:`_stack` (held out from the evaluation pairs)."""
    g = torch.Generator().manual_seed(0)
    draws = [(int(torch.randint(0, 60, (1,), generator=g)), int(torch.randint(1, max_dt + 1, (1,), generator=g)))
             for _ in range(pairs)]  # fmt: skip
    return _stack([_render_pair(100 + i, t, dt, hw, supersample) for i, (t, dt) in enumerate(draws)])


def epe(flow: torch.Tensor, truth: torch.Tensor) -> float:
    keep = in_bounds_mask(truth)[:, 0]
    return float((flow - truth).norm(dim=1)[keep].mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--loss", choices=("supervised", "unsupervised"), default="unsupervised")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--dt", type=int, default=4)
    p.add_argument("--sequences", type=int, nargs="+", default=[2, 3])
    p.add_argument("--resolution", default="128x256")
    p.add_argument("--iters", type=int, default=4)
    p.add_argument(
        "--model",
        choices=("raft", "field"),
        default="raft",
        help="field: no network, a 1/8-resolution flow field (bilinearly upsampled) fitted directly",
    )
    p.add_argument("--train-pairs", type=int, default=0,
                   help="0: train on the evaluation pairs (overfitting); N: train on N other pairs (dt 1..--dt), "
                        "a batch of len(--sequences) drawn each step, and measure on the evaluation pairs")  # fmt: skip
    p.add_argument("--supersample", type=int, default=1, help="render frames at N x the resolution, area-average down")
    p.add_argument("--config", default="flow_train_synthdrive_cpu")
    p.add_argument("overrides", nargs="*", help="loss.key=value overrides of the config's loss section")
    args = p.parse_args(argv)
    if args.model == "field" and args.train_pairs:  # checked before any rendering
        print(
            "error: --model field fits one field per evaluation pair; it cannot train on --train-pairs", file=sys.stderr
        )
        return 2
    try:
        hw = _resolution(args.resolution)
        cfg = load_flow_train_config(args.config, args.overrides)
        a, b, truth = synthdrive_pairs(args.sequences, args.dt, hw, args.supersample)
        pool = training_pool(args.train_pairs, args.dt, hw, args.supersample) if args.train_pairs else None
    except argparse.ArgumentTypeError:
        print(f"error: --resolution {args.resolution!r}: expected HxW, e.g. 128x256", file=sys.stderr)
        return 2
    except (ConfigError, SynthDriveError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    if args.model == "raft":
        model = UnsupervisedRaft(cfg.model.size)
        params = list(model.parameters())
    else:  # the loss landscape without a network: where does gradient descent on the flow itself go from zero?
        field = torch.zeros(truth.shape[0], 2, hw[0] // 8, hw[1] // 8, requires_grad=True)
        params = [field]

        def model(a, b, iters):
            return [F.interpolate(field, size=hw, mode="bilinear", align_corners=False)] * iters

    opt = torch.optim.Adam(params, lr=args.lr)
    weights = sequence_weights(args.iters, 0.8)
    print(
        f"{args.model}, {args.loss}, dt {args.dt}, sequences {args.sequences} at {hw[0]}x{hw[1]} "
        f"(supersample {args.supersample}), lr {args.lr}"
    )
    print(f"zero flow EPE {epe(torch.zeros_like(truth), truth):.2f} px")
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(1)
    for step in range(args.steps + 1):
        if step % 25 == 0 or step == args.steps:
            with torch.no_grad():
                last = model(a, b, args.iters)[-1]
            print(f"step {step:4d}  EPE {epe(last, truth):6.2f} px  mean |flow| {last.norm(dim=1).mean():6.2f} px  "
                  f"{time.perf_counter() - t0:5.0f} s", flush=True)  # fmt: skip
        if step == args.steps:
            break
        if pool is None:
            ta, tb, tt = a, b, truth
        else:  # a fresh batch of held-out-sequence pairs: can the network generalise, not just memorise?
            pa, pb, pflow = pool
            pick = torch.randperm(pa.shape[0], generator=g)[: a.shape[0]]
            ta, tb, tt = pa[pick], pb[pick], torch.cat((pflow[pick], pflow[pick + pa.shape[0]]))
        flows = model(ta, tb, args.iters)
        if args.loss == "supervised":
            m = in_bounds_mask(tt).float()
            loss = sum(w * ((f - tt).abs().sum(1, keepdim=True) * m).sum() / m.sum() for w, f in zip(weights, flows))
        else:
            occlusion = cfg.loss.occlusion and step >= cfg.loss.occlusion_after  # as the trainer does
            loss = unsupervised_flow_loss(torch.cat((ta, tb)), torch.cat((tb, ta)), flows, cfg.loss, occlusion)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
