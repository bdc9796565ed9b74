"""Export a trained backbone as a plain torchvision state dict (and the SDM separately).

`torchvision.models.resnet50().load_state_dict(torch.load(OUT, weights_only=True), strict=False)` loads the
export with only `fc.*` missing: the most common complaint about SSL checkpoints is keys that load nowhere.
"""

from __future__ import annotations

from pathlib import Path

from poodle.config import from_dict
from poodle.engine.checkpoint import CheckpointError, atomic_save, load_checkpoint
from poodle.model.ema import EMANetworks
from poodle.objective import build_method


def resolve_checkpoint(run_or_ckpt: str | Path) -> Path:
    path = Path(run_or_ckpt)
    if path.is_dir():
        path = path / "last.pt"
        if not path.is_file():
            raise CheckpointError(f"{run_or_ckpt} is a folder without last.pt: is it a poodle run folder?")
    return path


def load_networks(run_or_ckpt: str | Path) -> tuple[EMANetworks, dict]:
    """Rebuild the networks of a poodle checkpoint (online + target) from the config it stores, for any method."""
    ckpt = load_checkpoint(resolve_checkpoint(run_or_ckpt))
    if "networks" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{run_or_ckpt} is not a poodle training checkpoint (no 'networks'/'config')")
    cfg = from_dict(ckpt["config"])
    networks = build_method(cfg).networks
    networks.load_state_dict(ckpt["networks"])
    return networks, ckpt


FORMATS = ("torchvision", "timm", "mmseg")


def export_backbone(
    run_or_ckpt: str | Path,
    out: str | Path,
    decoder_out: str | Path | None = None,
    fmt: str = "torchvision",
    branch: str = "online",
) -> dict:
    """Write the backbone of a run as `fmt`:

    - `torchvision`: `resnet50().load_state_dict(sd, strict=False)` (only `fc` missing);
    - `timm`: the same keys (timm's ResNet uses torchvision's names): `timm.create_model("resnet50",
      num_classes=0, pretrained=True, pretrained_cfg_overlay=dict(file=OUT))`;
    - `mmseg`: `{"state_dict": {"backbone.<name>": ...}, "meta": ...}` for MMSegmentation/MMDetection's `ResNet`
      (`style="pytorch"`, the torchvision stem; not `ResNetV1c`), see docs/weights.md.
    `branch="ema"` exports the EMA target's encoder instead of the online one.
    """
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    networks, ckpt = load_networks(run_or_ckpt)
    if branch == "ema":
        backbone = {k: v.detach().clone() for k, v in networks.target["encoder"].state_dict().items()}
    else:
        backbone = networks.backbone_state_dict()
    if fmt == "mmseg":
        meta = {"poodle": {"source": str(run_or_ckpt), "step": int(ckpt["step"]), "branch": branch,
                           "arch": ckpt["config"]["model"]["arch"]}}  # fmt: skip
        atomic_save({"state_dict": {f"backbone.{k}": v for k, v in backbone.items()}, "meta": meta}, out)
    else:
        atomic_save(backbone, out)
    info = {"step": int(ckpt["step"]), "arch": ckpt["config"]["model"]["arch"], "backbone": str(out),
            "tensors": len(backbone), "format": fmt, "branch": branch}  # fmt: skip
    if decoder_out is not None:
        decoder = networks.decoder_state_dict()
        if not decoder:
            raise CheckpointError("this model has no spatial decoder to export (only PooDLe and its SDM ablations do)")
        atomic_save(decoder, decoder_out)
        info["decoder"] = str(decoder_out)
    return info


__all__ = ["FORMATS", "export_backbone", "load_networks", "resolve_checkpoint"]
