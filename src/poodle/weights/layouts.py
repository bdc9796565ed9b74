"""Published checkpoint layouts: recognise a file by its keys and map it to poodle's networks or a torchvision
backbone, tensor for tensor.

| Layout | Recognised by | Becomes |
|---|---|---|
| `poodle_release` | `model` with `backbone.`, `teacher_backbone.`, `decoder_blocks.`/`dense_projector.` | PooDLe run |
| `flowe_release` | `model` with `encoder.`, `target_encoder.`, `projector.` | FlowE (release) run |
| `dino_full` | `student` / `teacher` with `[module.]backbone.` | backbone (teacher by default, as DINO) |
| `pixpro` | `model` with `[module.]encoder.` and `[module.]encoder_k.` | backbone (online by default) |
| `moco` | `state_dict` with `[module.]encoder_q.` / `encoder_k.` (MoCo, DenseCL training files) | backbone (online) |
| `torchvision` | ResNet key names, bare or nested, `module.`/`backbone.`/`encoder.` prefixes stripped | backbone |

(`torchvision` covers torchvision's files, DenseCL's and DINO's extracted backbones and `poodle export`.)

The release's own `eval_load_model` deletes every "backbone." substring (so `teacher_backbone.x` became
`teacher_x`); these converters map each prefix exactly instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from poodle.config import Config, load_config
from poodle.model.encoder import IGNORED_PREFIXES, clean_state_dict

LAYOUTS = ("poodle_release", "flowe_release", "dino_full", "pixpro", "moco", "torchvision")
# Which copy a backbone comes from when `branch="auto"`: the convention of each method's own evaluations.
DEFAULT_BRANCH = {"dino_full": "ema", "poodle_release": "online", "flowe_release": "online", "pixpro": "online",
                  "moco": "online", "torchvision": "online"}  # fmt: skip


class LayoutError(ValueError):
    """The file matches no known layout; the message names the known ones and what the file holds."""


def _tensors(obj: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    return None


def _has(keys, *prefixes: str) -> bool:
    return all(any(k.startswith(p) for k in keys) for p in prefixes)


def _strip_module(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("module."): v for k, v in state.items()}


def identify(obj: Any) -> str:
    """The layout name of a checkpoint's plain data (from `read_foreign` or `torch.load`)."""
    if isinstance(obj, Mapping):
        model = _tensors(obj.get("model"))
        if model is not None:
            keys = list(model)
            if _has(keys, "backbone.", "teacher_backbone.") and (
                _has(keys, "decoder_blocks.") or _has(keys, "dense_projector.") or _has(keys, "pooled_projector.")
            ):
                return "poodle_release"
            if _has(keys, "encoder.", "target_encoder.", "projector."):
                return "flowe_release"
            stripped = list(_strip_module(model))
            if _has(stripped, "encoder.", "encoder_k."):
                return "pixpro"
        student, teacher = obj.get("student"), obj.get("teacher")
        if _tensors(student) is not None and _tensors(teacher) is not None:
            if _has(list(_strip_module(student)), "backbone."):
                return "dino_full"
        state = _tensors(obj.get("state_dict"))
        if state is not None and _has(list(_strip_module(state)), "encoder_q.", "encoder_k."):
            return "moco"
    try:
        state = clean_state_dict(obj) if isinstance(obj, Mapping) else None
    except ValueError:
        state = None
    if state and "conv1.weight" in state and "layer4.0.conv1.weight" in state:
        return "torchvision"
    top = ", ".join(list(obj)[:8]) if isinstance(obj, Mapping) else type(obj).__name__
    raise LayoutError(f"the file matches none of the known layouts ({', '.join(LAYOUTS)}); it holds: {top}")


def _sub(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def resolve_branch(layout: str, branch: str) -> str:
    if branch not in ("auto", "online", "ema"):
        raise ValueError(f"branch must be auto, online or ema, got {branch!r}")
    return DEFAULT_BRANCH[layout] if branch == "auto" else branch


def backbone_state(obj: Any, layout: str, branch: str = "auto") -> tuple[dict[str, torch.Tensor], str]:
    """(torchvision ResNet state dict without `fc`, the branch used) from a checkpoint of any known layout."""
    branch = resolve_branch(layout, branch)
    if layout == "poodle_release":
        state = _sub(obj["model"], "backbone." if branch == "online" else "teacher_backbone.")
    elif layout == "flowe_release":
        state = _sub(obj["model"], "encoder." if branch == "online" else "target_encoder.")
    elif layout == "dino_full":
        net = _strip_module(obj["student" if branch == "online" else "teacher"])
        state = _sub(net, "backbone.")
    elif layout == "pixpro":
        state = _sub(_strip_module(obj["model"]), "encoder." if branch == "online" else "encoder_k.")
    elif layout == "moco":
        net = _strip_module(obj["state_dict"])
        part = _sub(net, "encoder_q." if branch == "online" else "encoder_k.")
        # MoCo: encoder_q is the ResNet itself (fc = the MLP head); DenseCL: Sequential(backbone, neck) -> "0."
        state = _sub(part, "0.") if any(k.startswith("0.") for k in part) else part
    elif layout == "torchvision":
        if branch == "ema":
            raise LayoutError("a plain backbone state dict has one set of weights; --branch ema does not apply")
        state = clean_state_dict(obj)
    else:
        raise LayoutError(f"unknown layout {layout!r}")
    state = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
    if "conv1.weight" not in state:
        raise LayoutError(f"no ResNet weights found for the {branch} branch of this {layout} checkpoint")
    return state, branch


# ---- whole runs: the release's PooDLe and FlowE -> poodle networks


def _rename(state: dict[str, torch.Tensor], rules: list[tuple[str, str]]) -> tuple[dict[str, torch.Tensor], list]:
    out, dropped = {}, []
    for key, value in state.items():
        for old, new in rules:
            if key.startswith(old):
                if new is not None:
                    out[new + key[len(old) :]] = value
                else:
                    dropped.append(key)
                break
        else:
            dropped.append(key)
    return out, dropped


# Order matters: the longest prefix first (teacher_* before the online names they contain).
POODLE_RULES = [
    ("teacher_backbone.", "target.encoder."), ("teacher_decoder_blocks.", "target.decoder.blocks."),
    ("teacher_decoder_laterals.", "target.decoder.laterals."),
    ("teacher_dense_projector.", "target.dense_projector."), ("teacher_pooled_projector.", "target.pooled_projector."),
    ("backbone.", "encoder."), ("decoder_blocks.", "decoder.blocks."), ("decoder_laterals.", "decoder.laterals."),
    ("dense_projector.", "dense_projector."), ("dense_predictor.", "dense_predictor."),
    ("pooled_projector.", "pooled_projector."), ("pooled_predictor.", "pooled_predictor."),
    ("flow_model.", None),  # RAFT (princeton-vl layout): not part of the learned networks
]  # fmt: skip
FLOWE_RULES = [
    ("target_encoder.", "target.encoder."), ("target_projector.", "target.dense_projector."),
    ("encoder.", "encoder."), ("projector.", "dense_projector."), ("predictor.", "dense_predictor."),
    ("flownet.", None),
]  # fmt: skip


def release_config(layout: str, foreign_args: Any = None, model: Mapping[str, torch.Tensor] | None = None) -> Config:
    """The poodle config the release's run corresponds to: the shipped recipe of that method, with the model's
    sizes read off the weights (arch, head widths, which branches and decoder parts exist). The release's Hydra
    config is kept verbatim in `converted.json`."""
    if layout == "poodle_release":
        name = "poodle_bdd100k"
        data = foreign_args.get("data", {}) if isinstance(foreign_args, Mapping) else {}
        data_name = str(data.get("name", data.get("dataset", ""))).lower() if isinstance(data, Mapping) else ""
        if "wt" in data_name or "walking" in data_name:
            name = "poodle_wt"
        prefix, heads = "backbone.", ("dense_projector", "pooled_projector")
    elif layout == "flowe_release":
        name, prefix, heads = "flowe_bdd100k", "encoder.", ("projector",)
    else:
        raise LayoutError(f"{layout} is a backbone layout, not a whole run; convert it to a backbone .pth")
    if model is None:
        return load_config(name)
    encoder = _sub(dict(model), prefix)
    arch = "resnet50" if "layer1.0.conv3.weight" in encoder else (
        "resnet34" if "layer3.5.conv1.weight" in encoder else "resnet18")  # fmt: skip
    head = next(h for h in heads if f"{h}.0.weight" in model)
    overrides = [f"model.arch={arch}", f"model.proj_hidden_dim={model[f'{head}.0.weight'].shape[0]}",
                 f"model.proj_out_dim={model[f'{head}.3.weight'].shape[0]}",
                 f"model.head_bias={str(f'{head}.0.bias' in model).lower()}"]  # fmt: skip
    if layout == "poodle_release":
        overrides += [f"objective.dense={str('dense_projector.0.weight' in model).lower()}",
                      f"objective.pooled={str('pooled_projector.0.weight' in model).lower()}",
                      f"model.decoder_top_down={str(_has(model, 'decoder_blocks.')).lower()}",
                      f"model.decoder_lateral={str(_has(model, 'decoder_laterals.')).lower()}"]  # fmt: skip
    return load_config(name, overrides)


def release_networks_state(obj: Any, layout: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(poodle networks state dict, dropped keys) for the release's PooDLe or FlowE checkpoint."""
    rules = POODLE_RULES if layout == "poodle_release" else FLOWE_RULES
    return _rename(obj["model"], rules)
