"""`EMANetworks`: online modules and their exponential-moving-average target copies, shared by every method."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn


class EMANetworks(nn.Module):
    """Online modules and their EMA copies under `self.target` (so `.to()`, state dicts and checkpoints carry it).

    A subclass builds its online modules (`self.encoder` first), then calls `self._make_target(names)`. Target
    parameters have `requires_grad=False`; the target stays in train mode (batch-statistics BatchNorm, as BYOL,
    MoCo, DINO and PixPro run their momentum networks).
    """

    # Set by every subclass (no class-level default: nn.Module finds registered submodules only when normal
    # attribute lookup fails, so a class attribute would shadow them).
    encoder: nn.Module
    decoder: nn.Module | None

    def __init__(self) -> None:
        super().__init__()
        self._ema_lists: tuple[list[Tensor], ...] | None = None

    def _make_target(self, names: tuple[str, ...]) -> None:
        self.target = nn.ModuleDict({n: copy.deepcopy(getattr(self, n)) for n in names if getattr(self, n) is not None})
        self.target.requires_grad_(False)

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        """xi <- tau * xi + (1 - tau) * theta for all target parameters; BN buffers are copied from online.

        One fused `_foreach_lerp_` over all parameters: lerp(xi, theta, 1 - tau) = xi + (1 - tau) * (theta - xi).
        """
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"EMA momentum must be in [0, 1], got {tau}")
        target_params, online_params, target_bufs, online_bufs = self._ema_tensors()
        if tau < 1.0 and target_params:
            torch._foreach_lerp_(target_params, online_params, 1.0 - tau)
        if target_bufs:
            torch._foreach_copy_(target_bufs, online_bufs)

    def _ema_tensors(self) -> tuple[list[Tensor], ...]:
        """(target params, online params, target buffers, online buffers), built once and cached.

        The cache is dropped by `_apply` (`.to()`, `.cuda()`, `.half()` replace buffer tensors), by
        `load_state_dict` and by assigning a module attribute; call `reset_ema_cache()` after replacing
        modules deeper down by hand (e.g. `convert_sync_batchnorm` on a submodule).
        """
        if self._ema_lists is None:
            lists: tuple[list[Tensor], ...] = ([], [], [], [])
            for name, target_module in self.target.items():
                online_module = getattr(self, name)
                for tgt_iter, src_iter, tgt_list, src_list in (
                    (target_module.named_parameters(), online_module.named_parameters(), lists[0], lists[1]),
                    (target_module.named_buffers(), online_module.named_buffers(), lists[2], lists[3]),
                ):
                    tgt_named, src_named = dict(tgt_iter), dict(src_iter)
                    if tgt_named.keys() != src_named.keys():
                        raise RuntimeError(f"target and online {name} have different structures")
                    for key, tensor in tgt_named.items():
                        tgt_list.append(tensor)
                        src_list.append(src_named[key])
            self._ema_lists = lists
        return self._ema_lists

    def reset_ema_cache(self) -> None:
        self._ema_lists = None

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, nn.Module):  # a replaced online/target module invalidates the cached lists
            self.__dict__["_ema_lists"] = None
        super().__setattr__(name, value)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> EMANetworks:
        self._ema_lists = None
        return super()._apply(fn, *args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        self._ema_lists = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def train(self, mode: bool = True) -> EMANetworks:
        """Online modules follow `mode`; the target always stays in train mode (batch-statistics BN).

        Its running buffers are never used in train mode and are overwritten from the online network by every
        `update_target`, so keeping it in train mode also during `eval()` costs nothing.
        """
        super().train(mode)
        if hasattr(self, "target"):
            self.target.train(True)
        return self

    def online_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the optimiser updates (everything except the target)."""
        return (p for name, p in self.named_parameters() if not name.startswith("target."))

    def backbone_state_dict(self) -> dict[str, Tensor]:
        """Online encoder weights with torchvision key names (torchvision loads them, only fc missing)."""
        return self.encoder.torchvision_state_dict()

    def decoder_state_dict(self) -> dict[str, Tensor]:
        """Online spatial decoder weights (empty when the method has none)."""
        if getattr(self, "decoder", None) is None:
            return {}
        return {k: v.detach().clone() for k, v in self.decoder.state_dict().items()}
