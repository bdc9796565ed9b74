"""`poodle export RUN_OR_CKPT OUT.pth [--decoder SDM.pth]`: the backbone as a torchvision state dict."""

from __future__ import annotations

import argparse

from poodle.cli import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a run folder (uses its last.pt) or a checkpoint file")
    p.add_argument("out", help="where to write the backbone state dict (torchvision ResNet key names)")
    p.add_argument("--decoder", metavar="SDM.pth", help="also write the spatial decoder's state dict here")


def run(args: argparse.Namespace) -> int:
    from poodle.engine.checkpoint import CheckpointError
    from poodle.engine.export import export_backbone

    try:
        info = export_backbone(args.checkpoint, args.out, args.decoder)
    except CheckpointError as e:
        raise UserError(str(e)) from e
    print(f"exported {info['arch']} backbone at step {info['step']} ({info['tensors']} tensors) to {info['backbone']}")
    if "decoder" in info:
        print(f"exported the spatial decoder to {info['decoder']}")
    print(f"load it with: torchvision.models.{info['arch']}().load_state_dict(torch.load(PATH), strict=False)")
    return 0
