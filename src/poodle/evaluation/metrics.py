"""Segmentation metrics from an accumulated confusion matrix, with mmsegmentation `IoUMetric` semantics.

Rows of the matrix are ground truth, columns are predictions. With TP_c the diagonal, GT_c the row sums and
PRED_c the column sums (all over labelled pixels only, i.e. ground truth != ignore_index):

- IoU_c = TP_c / (GT_c + PRED_c - TP_c) = TP / (TP + FP + FN); NaN when the union is 0.
- mIoU = nanmean over classes: a class absent from both ground truth and prediction (union 0) is excluded; a class
  absent from the ground truth but predicted somewhere has IoU 0 and *does* count.
- aAcc = sum_c TP_c / sum_c GT_c (overall pixel accuracy over labelled pixels).
- Acc_c = TP_c / GT_c (NaN when the class has no ground-truth pixel); mAcc = nanmean of Acc_c.

All values are fractions in [0, 1] (tables print them as percentages). The matrix is accumulated over the whole
dataset before any division, so results do not depend on the batch size or on image order.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch


@dataclass
class SegMetrics:
    miou: float
    aacc: float
    macc: float
    per_class_iou: list[float]
    per_class_acc: list[float]
    num_pixels: int  # labelled (non-ignored) ground-truth pixels
    # Raw per-class counts, so group metrics (pixel accuracy over a set of classes) can be derived exactly.
    per_class_tp: list[int] = field(default_factory=list)
    per_class_gt: list[int] = field(default_factory=list)
    per_class_pred: list[int] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.per_class_iou)

    def to_dict(self) -> dict:
        """JSON-safe dict: NaN becomes None (strict JSON has no NaN)."""
        return {k: _nan_to_none(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> SegMetrics:
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for k in ("miou", "aacc", "macc"):
            kw[k] = _none_to_nan(kw[k])
        for k in ("per_class_iou", "per_class_acc"):
            kw[k] = [_none_to_nan(x) for x in kw[k]]
        return cls(**kw)


def _nan_to_none(v):
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, list):
        return [_nan_to_none(x) for x in v]
    return v


def _none_to_nan(v) -> float:
    return float("nan") if v is None else float(v)


def _nanmean(values: torch.Tensor) -> float:
    valid = values[~torch.isnan(values)]
    return float(valid.mean()) if valid.numel() else float("nan")


def metrics_from_matrix(matrix: torch.Tensor) -> SegMetrics:
    """Metrics of a (C, C) confusion matrix, rows = ground truth (see the module docstring)."""
    m = matrix.detach().to("cpu", torch.float64)
    tp = torch.diag(m)
    gt = m.sum(1)
    pred = m.sum(0)
    union = gt + pred - tp
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    # Division by a zero union / zero GT count yields NaN on purpose (torch.where avoids 0/0 warnings).
    iou = torch.where(union > 0, tp / union.clamp_min(1), nan)
    acc = torch.where(gt > 0, tp / gt.clamp_min(1), nan)
    total = float(gt.sum())
    return SegMetrics(
        miou=_nanmean(iou),
        aacc=float(tp.sum()) / total if total > 0 else float("nan"),
        macc=_nanmean(acc),
        per_class_iou=iou.tolist(),
        per_class_acc=acc.tolist(),
        num_pixels=int(total),
        per_class_tp=[int(x) for x in tp.tolist()],
        per_class_gt=[int(x) for x in gt.tolist()],
        per_class_pred=[int(x) for x in pred.tolist()],
    )


class ConfusionMatrix:
    """Accumulates a (C, C) int64 confusion matrix (rows = ground truth) on the device of the inputs.

    `update` is a single `bincount`; ground-truth pixels equal to `ignore_index` are dropped, any other value
    outside [0, C) raises ValueError (a wrong label encoding must never be silently clipped into a class).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self._device = torch.device(device) if device is not None else None
        self._matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)

    @property
    def matrix(self) -> torch.Tensor:
        """The accumulated (C, C) int64 matrix, rows = ground truth, columns = prediction."""
        return self._matrix

    def reset(self) -> None:
        self._matrix.zero_()

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: `pred` and `target` are integer tensors of the same shape, e.g. (N, H, W)."""
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        if pred.is_floating_point() or target.is_floating_point():
            raise ValueError("pred and target must be integer class maps (take argmax of the logits first)")
        if self._device is None and self._matrix.device != target.device:
            # No device given: follow the data (first update), so the bincount runs where the predictions are.
            self._matrix = self._matrix.to(target.device)
        c = self.num_classes
        target = target.to(self._matrix.device).reshape(-1).long()
        pred = pred.to(self._matrix.device).reshape(-1).long()
        keep = target != self.ignore_index
        target = target[keep]
        pred = pred[keep]
        bad_t = (target < 0) | (target >= c)
        bad_p = (pred < 0) | (pred >= c)
        if bool((bad_t | bad_p).any()):  # one host sync per batch on the happy path
            self._raise_out_of_range(pred, target, bad_t, bad_p)
        self._matrix += torch.bincount(target * c + pred, minlength=c * c).reshape(c, c)

    def _raise_out_of_range(
        self, pred: torch.Tensor, target: torch.Tensor, bad_t: torch.Tensor, bad_p: torch.Tensor
    ) -> None:
        c = self.num_classes
        if bool(bad_t.any()):
            vals, counts = torch.unique(target[bad_t], return_counts=True)
            listing = ", ".join(f"{v}:{n}" for v, n in zip(vals.tolist(), counts.tolist()))
            raise ValueError(
                f"ground truth has values outside [0, {c}) that are not ignore_index={self.ignore_index} "
                f"(value:count) {listing}; check the label encoding (train ids, reduce_zero_label)"
            )
        vals, counts = torch.unique(pred[bad_p], return_counts=True)
        listing = ", ".join(f"{v}:{n}" for v, n in zip(vals.tolist(), counts.tolist()))
        raise ValueError(f"predictions outside [0, {c}) (value:count) {listing}")

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        if other.num_classes != self.num_classes:
            raise ValueError("cannot merge confusion matrices with different numbers of classes")
        self._matrix += other.matrix.to(self._matrix.device)
        return self

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the matrix over all ranks when torch.distributed is initialised (no-op otherwise).

        With the NCCL backend the matrix must live on the rank's GPU (pass `device` or update with CUDA tensors).
        """
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self._matrix, op=dist.ReduceOp.SUM)
        return self

    def compute(self) -> SegMetrics:
        return metrics_from_matrix(self._matrix)
