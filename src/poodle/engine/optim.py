"""Optimisers: AdamW (default), SGD and LARS, with no weight decay on biases and normalisation parameters."""

from __future__ import annotations

import torch
from torch import nn

from poodle.config import OptimConfig


def param_groups(module: nn.Module, weight_decay: float, decay_norm_and_bias: bool = False) -> list[dict]:
    """Two groups: weights of convs/linears decay; biases and 1-D params (BN) do not (timm's add_weight_decay),
    unless `decay_norm_and_bias` (then every parameter decays, as plain SGD in MoCo/DenseCL; LARS still skips its
    trust ratio for them)."""
    decay, no_decay = [], []
    for _, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 and not decay_norm_and_bias else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
    ]


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) as in BYOL/FlowE: SGD with momentum and a per-layer trust ratio.

    Parameters in groups with `lars_exclude` (biases, norms) get neither weight decay nor trust-ratio scaling.
    """

    def __init__(self, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9, eta: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if not group.get("lars_exclude", False):
                    d_p = d_p.add(p, alpha=group["weight_decay"])
                    p_norm, g_norm = torch.norm(p), torch.norm(d_p)
                    trust = torch.where(
                        (p_norm > 0) & (g_norm > 0), group["eta"] * p_norm / g_norm, torch.ones_like(p_norm)
                    )
                    d_p = d_p.mul(trust)
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = torch.clone(d_p).detach()
                else:
                    buf.mul_(group["momentum"]).add_(d_p)
                p.add_(buf, alpha=-group["lr"])
        return loss


def build_optimizer(module: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(module, cfg.weight_decay, cfg.decay_norm_and_bias)
    if cfg.optimizer in ("adamw", "sgd"):
        for g in groups:
            g.pop("lars_exclude", None)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    if cfg.optimizer == "sgd":  # MoCo/DenseCL and DINO's ResNet-50 command
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return LARS(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)


@torch.no_grad()
def clip_per_parameter(params: list[nn.Parameter], max_norm: float) -> None:
    """Scale each parameter's gradient to norm <= `max_norm` on its own (DINO's `clip_gradients`), without host
    syncs: the scale is computed on the device."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch._foreach_norm(grads)
    scales = [torch.clamp(max_norm / (n + 1e-6), max=1.0) for n in norms]
    torch._foreach_mul_(grads, scales)
