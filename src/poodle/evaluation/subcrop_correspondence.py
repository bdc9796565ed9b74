"""Do flow-aware subcrop pairs show the same content? Label agreement of paired boxes vs randomly paired boxes.

For each subcrop pair, the agreement is the histogram intersection of the class distributions inside the online
box (labels of the online frame) and inside the target box (labels of the frame the target crop is cut from):
1 when both boxes hold the same mix of classes, 0 when they share none. Pairing each online box with the target
box of another pair gives the chance level. Used by tests/test_subcrop_correspondence.py and
`benchmarks/subcrop_correspondence.py`.
"""

from __future__ import annotations

import torch
from torch import Tensor


def box_class_histograms(labels: Tensor, boxes: Tensor, image_index: Tensor, num_classes: int) -> Tensor:
    """Class distribution inside each box. labels (N, H, W) long (255 ignored); boxes (M, 4) x1,y1,x2,y2 pixel
    edges; image_index (M,) which label map each box reads. Returns (M, num_classes), rows sum to 1 (or 0)."""
    n, h, w = labels.shape
    onehot = torch.zeros(n, num_classes + 1, h, w)
    onehot.scatter_(1, labels.clamp(max=num_classes).unsqueeze(1), 1.0)
    onehot = onehot[:, :num_classes]  # drop ignore
    integral = torch.nn.functional.pad(onehot.cumsum(2).cumsum(3), (1, 0, 1, 0))  # (N, C, H+1, W+1)
    x1, y1, x2, y2 = (boxes.round().long()[:, i] for i in range(4))
    x1, x2 = x1.clamp(0, w), x2.clamp(0, w)
    y1, y2 = y1.clamp(0, h), y2.clamp(0, h)
    ii = integral[image_index]
    ar = torch.arange(len(boxes))
    counts = ii[ar, :, y2, x2] - ii[ar, :, y1, x2] - ii[ar, :, y2, x1] + ii[ar, :, y1, x1]
    return counts / counts.sum(1, keepdim=True).clamp(min=1)


def histogram_intersection(p: Tensor, q: Tensor) -> Tensor:
    return torch.minimum(p, q).sum(1)


def paired_vs_random_agreement(
    labels_online: Tensor,
    labels_target: Tensor,
    online_boxes: Tensor,
    target_boxes: Tensor,
    target_from_online: Tensor,
    num_classes: int,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-pair label agreement (B*K,) of the true subcrop pairs and of randomly re-paired boxes (chance level).

    labels_*: (B, H, W); boxes (B, K, 4); target_from_online (B, K) bool (same-frame fallback pairs read the
    online frame's labels for their target box)."""
    b, k = online_boxes.shape[:2]
    idx = torch.arange(b).repeat_interleave(k)
    stacked = torch.cat([labels_online, labels_target])
    tgt_img = torch.where(target_from_online.reshape(-1), idx, idx + b)
    p = box_class_histograms(stacked, online_boxes.reshape(-1, 4), idx, num_classes)
    q = box_class_histograms(stacked, target_boxes.reshape(-1, 4), tgt_img, num_classes)
    perm = torch.randperm(len(q), generator=generator)
    return histogram_intersection(p, q), histogram_intersection(p, q[perm])
