"""`poodle convert SRC OUT`: a published checkpoint to poodle's formats, read without running code from it.

    poodle convert poodle_bdd100k_ep100.pth runs/poodle_release      # the authors' PooDLe -> a run folder
    poodle convert flowe_bdd100k_ep100.pth runs/flowe_release        # the authors' FlowE  -> a run folder
    poodle convert dino_resnet50_full.pth dino_r50.pth               # DINO (teacher by default) -> a .pth
    poodle convert pixpro_base_r50_100ep.pth pixpro.pth --branch ema # PixPro's momentum encoder -> a .pth

A run folder is fine-tuned by `poodle pretrain --out DIR`, read by `poodle eval --weights DIR` and exported by
`poodle export DIR`. Layouts, provenance and expected readouts: docs/weights.md.
"""

from __future__ import annotations

import argparse

from poodle.cli import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="the published checkpoint file")
    p.add_argument("out", help="a new run folder (the release's PooDLe/FlowE) or a .pth file (backbones)")
    p.add_argument(
        "--branch",
        choices=("auto", "online", "ema"),
        default="auto",
        help="backbones: online or EMA weights (auto: DINO's teacher, the others' online network)",
    )
    p.add_argument("--inspect", action="store_true", help="print the layout and the pickled classes; write nothing")


def run(args: argparse.Namespace) -> int:
    from poodle.engine.checkpoint import CheckpointError
    from poodle.weights.convert import ConvertError, convert

    try:
        if args.inspect:
            from poodle.weights.layouts import LayoutError, identify
            from poodle.weights.safe_pickle import UnsafeCheckpointError, read_foreign

            try:
                obj, seen = read_foreign(args.src)
            except UnsafeCheckpointError as e:
                raise UserError(f"refusing {args.src}: its pickle calls {e}, which runs code") from None
            try:
                layout = identify(obj)
            except LayoutError as e:
                layout = f"unknown ({e})"
            print(f"{args.src}: layout {layout}\nclasses named by its pickle: {', '.join(sorted(seen))}")
            return 0
        info = convert(args.src, args.out, branch=args.branch)
    except (ConvertError, CheckpointError) as e:
        raise UserError(str(e)) from e
    if "branch" in info:
        print(f"{info['layout']}: {info['branch']} {info['arch']} backbone, {info['tensors']} tensors -> {info['out']}")
        print(f"read it with: poodle eval linear --weights {info['out']} ...")
    else:
        print(
            f"{info['layout']}: {info['tensors']} tensors as config {info['config']} -> run folder {info['out']} "
            f"(left out: {', '.join(info['dropped_prefixes']) or 'nothing'}; release epoch {info['epoch']})"
        )
        print(
            f"fine-tune: poodle pretrain --config {info['config']} --out {info['out']}; read out: poodle eval "
            f"linear --weights {info['out']} ...; export: poodle export {info['out']} backbone.pth"
        )
    return 0
