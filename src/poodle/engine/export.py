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


def export_backbone(run_or_ckpt: str | Path, out: str | Path, decoder_out: str | Path | None = None) -> dict:
    networks, ckpt = load_networks(run_or_ckpt)
    backbone = networks.backbone_state_dict()
    atomic_save(backbone, out)
    info = {"step": int(ckpt["step"]), "arch": ckpt["config"]["model"]["arch"], "backbone": str(out),
            "tensors": len(backbone)}  # fmt: skip
    if decoder_out is not None:
        decoder = networks.decoder_state_dict()
        if not decoder:
            raise CheckpointError("this model has no spatial decoder to export (only PooDLe and its SDM ablations do)")
        atomic_save(decoder, decoder_out)
        info["decoder"] = str(decoder_out)
    return info


__all__ = ["export_backbone", "load_networks", "resolve_checkpoint"]
