"""Pooled BYOL loss on flow-aware subcrop pairs (paper Eq. 2).

    L_pool = mean_k || normalize(q(p_bar_online,k)) - normalize(p_bar_target,k) ||^2

Each online subcrop predicts its own paired target subcrop (not a global view, unlike multi-crop).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def pooled_loss(online: Tensor, target: Tensor) -> Tensor:
    """online: (N, D) predictor outputs; target: (N, D) target projector outputs, row k paired with row k."""
    online = F.normalize(online.float(), dim=1)
    target = F.normalize(target.float(), dim=1)
    return (online - target).pow(2).sum(dim=1).mean()
