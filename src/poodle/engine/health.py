"""Divergence and collapse checks for the training loop, built so that they add no host sync to unlogged steps.

Every step folds "is the loss or the gradient norm non-finite?" into a flag tensor on the device (no sync). On
logged and checkpoint steps the loop reads that flag together with "is any parameter or buffer of the networks
non-finite?" (BatchNorm running statistics included) in a single transfer; a bad flag stops the run before anything
is saved, so a diverged model is never checkpointed. Feature collapse (a finite loss whose feature spread went to
0, as `optim.lr=1e6` produces) is watched on the logged `*_std` values that each method reports.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def grad_norm(parameters: Iterable[nn.Parameter]) -> torch.Tensor:
    """Total L2 norm of the gradients (a device tensor; no sync). inf/nan when any gradient is non-finite or huge."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads, norm_type=2.0)


def _float_state(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(k, v) for k, v in module.state_dict().items() if torch.is_tensor(v) and v.is_floating_point()]


def state_nonfinite(module: nn.Module) -> torch.Tensor:
    """A 0-d bool tensor: does any parameter or float buffer (running mean/var, EMA target) hold a nan/inf?"""
    tensors = [v for _, v in _float_state(module)]
    if not tensors:
        return torch.zeros((), dtype=torch.bool)
    return ~torch.stack([t.isfinite().all() for t in tensors]).all()


def nonfinite_names(module: nn.Module, limit: int = 5) -> tuple[list[str], int]:
    """The first `limit` state-dict names holding nan/inf, and how many there are (for the error message only)."""
    bad = [k for k, v in _float_state(module) if not bool(v.isfinite().all())]
    return bad[:limit], len(bad)


class CollapseMonitor:
    """Counts consecutive logged steps on which some feature spread (`*_std`, ~1 when healthy) is below `threshold`.

    `update` returns a warning line while the spread is low and raises the count; `collapsed` is true once the
    count reaches `patience` (0 = never stop, warn only).
    """

    def __init__(self, threshold: float, patience: int) -> None:
        self.threshold = threshold
        self.patience = patience
        self.count = 0
        self.since: int | None = None

    def update(self, step: int, values: dict[str, float]) -> str | None:
        low = {k: v for k, v in values.items() if k.endswith("_std") and v < self.threshold}
        if not low:
            self.count, self.since = 0, None
            return None
        self.count += 1
        self.since = step if self.since is None else self.since
        shown = ", ".join(f"{k}={v:.2g}" for k, v in sorted(low.items()))
        return (f"warning: step {step}: feature spread near 0 ({shown}; ~1 is healthy) on {self.count} logged "
                f"step(s) in a row since step {self.since}: the features may have collapsed")  # fmt: skip

    @property
    def collapsed(self) -> bool:
        return self.patience > 0 and self.count >= self.patience
