"""`poodle convert SRC OUT`: published checkpoints to poodle's formats, without running code from them.

- The release's PooDLe or FlowE checkpoint -> a poodle run folder (online + target networks, heads, SDM) at step 0
  with a fresh optimiser: `poodle pretrain --out OUT` fine-tunes it (any recipe whose model matches),
  `poodle eval --weights OUT` reads it, `poodle export OUT` exports it. The release's Hydra config, epoch and the
  keys left out (its RAFT) are kept in `OUT/converted.json`.
- A baseline's released weights (DINO full checkpoints, PixPro, MoCo/DenseCL training files, extracted backbones,
  torchvision) -> a torchvision ResNet state dict `.pth`, online or EMA weights (`branch`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from poodle.engine.checkpoint import atomic_save
from poodle.model.encoder import ResNetEncoder
from poodle.output_dir import OutputDirError, check_run_dir, check_writable, write_marker
from poodle.weights.layouts import (
    LayoutError,
    backbone_state,
    identify,
    release_config,
    release_networks_state,
)
from poodle.weights.safe_pickle import UnsafeCheckpointError, read_foreign

RUN_LAYOUTS = ("poodle_release", "flowe_release")


class ConvertError(ValueError):
    """One line: the file, what was wrong, what to do."""


def read_checkpoint(path: str | Path) -> tuple[Any, str, set[str]]:
    """(plain data, layout, globals named by the pickle) of any supported file; never runs code from it."""
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"{path}: no such file")
    try:
        obj, seen = read_foreign(path)
    except UnsafeCheckpointError as e:
        raise ConvertError(f"refusing {path}: its pickle calls {e}, which runs code; nothing from it was executed. "
                           "Get the file from its authors' page again") from None  # fmt: skip
    except ValueError as e:
        raise ConvertError(str(e)) from None
    try:
        layout = identify(obj)
    except LayoutError as e:
        raise ConvertError(f"{path}: {e}") from None
    return obj, layout, seen


def release_networks(obj: Any, layout: str):
    """(config, networks with the release's weights loaded, dropped keys) for the release's PooDLe/FlowE file."""
    from poodle.objective import build_method

    cfg = release_config(layout, obj.get("args"), obj["model"])
    state, dropped = release_networks_state(obj, layout)
    networks = build_method(cfg).networks
    result = networks.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ConvertError(
            f"the {layout} weights do not fit the {cfg.name} networks: missing {result.missing_keys[:4]}, "
            f"unexpected {result.unexpected_keys[:4]}"
        )
    return cfg, networks, dropped


def convert(src: str | Path, out: str | Path, branch: str = "auto") -> dict[str, Any]:
    """Convert `src` into `out` (a run folder for the release's runs, a `.pth` otherwise); returns a summary."""
    src, out = Path(src), Path(out)
    obj, layout, seen = read_checkpoint(src)
    info: dict[str, Any] = {"source": str(src.absolute()), "layout": layout, "globals": sorted(seen),
                            "converted": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
    if layout in RUN_LAYOUTS:
        try:
            check_run_dir(out)
            if out.exists() and any(out.iterdir()):
                raise OutputDirError(f"{out} is not empty; convert into a new folder")
        except OutputDirError as e:
            raise ConvertError(str(e)) from None
        cfg, networks, dropped = release_networks(obj, layout)
        info.update(config=cfg.name, epoch=obj.get("epoch"), dropped=len(dropped),
                    dropped_prefixes=sorted({k.split(".")[0] for k in dropped}),
                    tensors=len(networks.state_dict()), release_args=_jsonable(obj.get("args")))  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)
        write_marker(out, "pretrain")
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        ckpt = {"step": 0, "networks": networks.state_dict(), "optimizer": None, "scaler": None, "rng": None,
                "config": cfg.to_dict(), "world_size": 1,
                "converted_from": {"source": info["source"], "layout": layout, "epoch": info["epoch"]}}  # fmt: skip
        atomic_save(ckpt, out / "last.pt")
        (out / "converted.json").write_text(json.dumps(info, indent=1) + "\n")
        info["out"] = str(out)
        return info
    try:
        check_writable(out.parent)
    except OutputDirError as e:
        raise ConvertError(str(e)) from None
    try:
        state, used = backbone_state(obj, layout, branch)
    except LayoutError as e:
        raise ConvertError(f"{src}: {e}") from None
    arch = _check_resnet(state, src)
    atomic_save(state, out)
    info.update(branch=used, arch=arch, tensors=len(state), out=str(out))
    return info


def _check_resnet(state: dict[str, torch.Tensor], src: Path) -> str:
    from poodle.evaluation.backbones import BackboneError, infer_arch

    try:
        arch = infer_arch(state)
    except BackboneError as e:
        raise ConvertError(f"{src}: {e}") from None
    if arch not in ("resnet18", "resnet34", "resnet50"):
        raise ConvertError(f"{src}: a {arch} ResNet is not supported (resnet18/34/50)")
    result = ResNetEncoder(arch).load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ConvertError(f"{src}: not a complete {arch}: missing {result.missing_keys[:4]}, "
                           f"unexpected {result.unexpected_keys[:4]}")  # fmt: skip
    return arch


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist() if obj.numel() <= 16 else f"tensor{tuple(obj.shape)}"
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)
