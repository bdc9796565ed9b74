"""`poodle export RUN_OR_CKPT OUT.pth [--decoder SDM.pth]`: the backbone as a torchvision state dict."""

from __future__ import annotations

import argparse

from poodle.cli import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a run folder (uses its last.pt) or a checkpoint file")
    p.add_argument("out", help="where to write the backbone state dict (torchvision ResNet key names)")
    p.add_argument("--decoder", metavar="SDM.pth", help="also write the spatial decoder's state dict here")
    p.add_argument("--format", choices=("torchvision", "timm", "mmseg"), default="torchvision",
                   help="torchvision (default) and timm: ResNet key names; mmseg: {state_dict: backbone.*} "
                        "for MMSegmentation/MMDetection (docs/weights.md)")  # fmt: skip
    p.add_argument("--ema", action="store_true", help="export the EMA target's encoder instead of the online one")


def run(args: argparse.Namespace) -> int:
    from poodle.engine.checkpoint import CheckpointError
    from poodle.engine.export import export_backbone

    try:
        info = export_backbone(args.checkpoint, args.out, args.decoder, fmt=args.format,
                               branch="ema" if args.ema else "online")  # fmt: skip
    except CheckpointError as e:
        raise UserError(str(e)) from e
    print(f"exported {info['arch']} backbone at step {info['step']} ({info['tensors']} tensors) to {info['backbone']}")
    if "decoder" in info:
        print(f"exported the spatial decoder to {info['decoder']}")
    if info["format"] == "mmseg":
        print(
            "load it in MMSegmentation with load_from=PATH, or backbone init_cfg=dict(type='Pretrained', "
            "checkpoint=PATH, prefix='backbone.') on a ResNet with style='pytorch' (docs/weights.md)"
        )
    elif info["format"] == "timm":
        print(
            f"load it with: timm.create_model('{info['arch']}', num_classes=0, pretrained=True, "
            "pretrained_cfg_overlay=dict(file=PATH))"
        )
    else:
        print(f"load it with: torchvision.models.{info['arch']}().load_state_dict(torch.load(PATH), strict=False)")
    return 0
