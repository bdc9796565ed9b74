"""Self-supervised methods, one file each (its heads, its views, its loss), behind one contract (`base.Method`).

- `poodle.py`: PooDLe (dense flow-equivariance loss + pooled loss on flow-aware subcrops); with `objective.pooled=false`
  and the FlowE switches it is FlowE as the release trains it (`flowe_*` configs); `dense.py`/`pooled.py` its losses.
- `byol.py`, `dino.py`, `densecl.py`, `pixpro.py`: the paper's R50 baselines on the same frame pairs.

`build_method(cfg)` builds the one named by `cfg.method`; the engine never imports a method directly.
"""

from __future__ import annotations

import importlib

from poodle.config import Config
from poodle.objective.base import Method
from poodle.objective.dense import dense_loss, dense_target_and_mask
from poodle.objective.poodle import PairBatch, PooDLeObjective
from poodle.objective.pooled import pooled_loss

# method name -> "module:Class". Adding a method is a file and a line here; the engine is unchanged.
METHODS: dict[str, str] = {
    "poodle": "poodle.objective.poodle:PooDLeObjective",
    "byol": "poodle.objective.byol:BYOL",
    "dino": "poodle.objective.dino:DINO",
    "densecl": "poodle.objective.densecl:DenseCL",
    "pixpro": "poodle.objective.pixpro:PixPro",
}


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_method(cfg: Config) -> Method:
    """The method `cfg.method` names, with its networks at their initial weights (seed torch first)."""
    return method_class(cfg.method)(cfg)


__all__ = [
    "METHODS",
    "Method",
    "PairBatch",
    "PooDLeObjective",
    "build_method",
    "dense_loss",
    "dense_target_and_mask",
    "method_class",
    "pooled_loss",
]
