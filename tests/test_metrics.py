import math
import os
import socket
import subprocess
import sys

import pytest
import torch

from poodle.evaluation.metrics import ConfusionMatrix, SegMetrics, metrics_from_matrix

NAN = float("nan")


def _approx_list(values):
    return pytest.approx(values, nan_ok=True)


def test_hand_computed_3_class_image():
    # GT row 0: class 0, 0, 1; row 1: class 1, 2, 2.  Pred: 0 1 1 / 1 2 0.
    target = torch.tensor([[[0, 0, 1], [1, 2, 2]]])
    pred = torch.tensor([[[0, 1, 1], [1, 2, 0]]])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]  # rows = ground truth
    m = cm.compute()
    # TP = (1, 2, 1), GT = (2, 2, 2), PRED = (2, 3, 1) -> IoU = 1/3, 2/(2+3-2), 1/(2+1-1)
    assert m.per_class_iou == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert m.miou == pytest.approx(0.5)
    assert m.aacc == pytest.approx(4 / 6)
    assert m.per_class_acc == pytest.approx([0.5, 1.0, 0.5])
    assert m.macc == pytest.approx(2 / 3)
    assert m.num_pixels == 6
    assert (m.per_class_tp, m.per_class_gt, m.per_class_pred) == ([1, 2, 1], [2, 2, 2], [2, 3, 1])


def test_ignored_pixels_change_nothing_even_if_predicted_wrongly():
    target = torch.tensor([[[0, 0, 1], [1, 2, 2]]])
    pred = torch.tensor([[[0, 1, 1], [1, 2, 0]]])
    ref = ConfusionMatrix(3)
    ref.update(pred, target)
    # Add a column of ignored pixels predicted as every class.
    t2 = torch.cat([target, torch.full((1, 2, 2), 255)], dim=2)
    p2 = torch.cat([pred, torch.tensor([[[2, 1], [0, 2]]])], dim=2)
    cm = ConfusionMatrix(3)
    cm.update(p2, t2)
    assert torch.equal(cm.matrix, ref.matrix)
    assert cm.compute() == ref.compute()


def test_custom_ignore_index():
    cm = ConfusionMatrix(2, ignore_index=0)  # any ignore value works, even one inside [0, C)
    cm.update(torch.tensor([1, 1, 0]), torch.tensor([0, 1, 1]))
    assert cm.matrix.tolist() == [[0, 0], [1, 1]]


def test_class_absent_from_both_is_excluded_absent_from_gt_but_predicted_counts_as_zero():
    # 4 classes: class 2 never appears anywhere; class 3 is predicted once but never in the ground truth.
    target = torch.tensor([[0, 0, 1, 1]])
    pred = torch.tensor([[0, 0, 1, 3]])
    m = ConfusionMatrix(4)
    m.update(pred, target)
    r = m.compute()
    assert r.per_class_iou == _approx_list([1.0, 0.5, NAN, 0.0])
    assert math.isnan(r.per_class_iou[2])
    assert r.miou == pytest.approx((1.0 + 0.5 + 0.0) / 3)  # class 2 excluded, class 3 counted as 0
    assert r.per_class_acc == _approx_list([1.0, 0.5, NAN, NAN])  # no GT pixels -> NaN accuracy
    assert r.macc == pytest.approx(0.75)


def test_no_labelled_pixels_gives_nan_not_an_error():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([[1, 2]]), torch.tensor([[255, 255]]))
    r = cm.compute()
    assert math.isnan(r.miou) and math.isnan(r.aacc) and math.isnan(r.macc) and r.num_pixels == 0


def test_out_of_range_ground_truth_raises_with_value_counts():
    cm = ConfusionMatrix(3)
    target = torch.tensor([[0, 19, 19, 254, 255, -1]])
    with pytest.raises(ValueError) as e:
        cm.update(torch.zeros_like(target), target)
    msg = str(e.value)
    assert "-1:1" in msg and "19:2" in msg and "254:1" in msg and "255" not in msg.split("(value:count)")[1]
    assert cm.matrix.sum() == 0  # nothing was accumulated


def test_out_of_range_prediction_and_bad_inputs_raise():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="predictions outside"):
        cm.update(torch.tensor([[3, 0]]), torch.tensor([[0, 0]]))
    # A wrong prediction on an ignored pixel is dropped with the pixel, not reported.
    cm.update(torch.tensor([[7, 0]]), torch.tensor([[255, 0]]))
    assert cm.matrix.sum() == 1
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        cm.update(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))


def test_accumulation_over_batches_equals_one_update():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (6, 7, 9), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.2] = 255
    pred = torch.randint(0, 5, (6, 7, 9), generator=g)
    whole = ConfusionMatrix(5)
    whole.update(pred, target)
    parts = ConfusionMatrix(5)
    for i in range(0, 6, 2):
        parts.update(pred[i : i + 2], target[i : i + 2].to(torch.uint8))  # dtype of the labels doesn't matter
    assert torch.equal(whole.matrix, parts.matrix)
    merged = ConfusionMatrix(5)
    merged.update(pred[:3], target[:3])
    other = ConfusionMatrix(5)
    other.update(pred[3:], target[3:])
    assert torch.equal(merged.merge(other).matrix, whole.matrix)
    assert torch.equal(merged.all_reduce().matrix, whole.matrix)  # no process group: a no-op
    assert whole.compute().num_pixels == int((target != 255).sum())
    parts.reset()
    assert parts.matrix.sum() == 0


def test_metrics_dict_round_trip_nan_as_none():
    m = metrics_from_matrix(torch.tensor([[2, 0, 0], [0, 0, 0], [1, 0, 0]]))
    d = m.to_dict()
    assert d["per_class_iou"][1] is None and d["per_class_acc"][1] is None
    back = SegMetrics.from_dict(d)
    assert back.per_class_iou == _approx_list(m.per_class_iou)
    assert back.miou == pytest.approx(m.miou) and back.per_class_gt == m.per_class_gt


def _random_case(seed: int, num_classes: int = 6):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes - 2, (4, 16, 16), generator=g)  # the last two classes never in GT
    target[torch.rand(target.shape, generator=g) < 0.15] = 255
    pred = torch.randint(0, num_classes - 1, (4, 16, 16), generator=g)  # class C-2 predicted, C-1 never
    return pred, target


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_torchmetrics(seed):
    tm = pytest.importorskip("torchmetrics.classification")
    c = 6
    pred, target = _random_case(seed, c)
    cm = ConfusionMatrix(c)
    cm.update(pred, target)
    ours = cm.compute()

    iou = tm.MulticlassJaccardIndex(num_classes=c, average=None, ignore_index=255)
    iou.update(pred, target)
    theirs = iou.compute().tolist()
    # Equal for every class present in GT or prediction (union > 0), including class 4 (predicted, absent from GT).
    assert ours.per_class_iou[:5] == pytest.approx(theirs[:5], abs=1e-6)
    assert ours.per_class_iou[4] == 0.0
    # Documented difference: a class absent from both has IoU NaN here (excluded) but 0.0 in torchmetrics 1.9.
    assert math.isnan(ours.per_class_iou[5]) and theirs[5] == 0.0

    macro = tm.MulticlassJaccardIndex(num_classes=c, average="macro", ignore_index=255)
    macro.update(pred, target)
    # torchmetrics 1.9's macro average drops union-0 classes, so it equals our mIoU (not the mean of its own list).
    assert float(macro.compute()) == pytest.approx(ours.miou, abs=1e-6)
    assert float(macro.compute()) != pytest.approx(sum(theirs) / c, abs=1e-6)

    acc = tm.MulticlassAccuracy(num_classes=c, average="micro", ignore_index=255)
    acc.update(pred, target)
    assert float(acc.compute()) == pytest.approx(ours.aacc, abs=1e-6)

    # Mean class accuracy differs: torchmetrics' macro counts class 4 (predicted, no GT) as accuracy 0, while
    # mmseg mAcc averages only over classes with GT pixels.
    macc = tm.MulticlassAccuracy(num_classes=c, average="macro", ignore_index=255)
    macc.update(pred, target)
    per_class_gt_only = [a for a in ours.per_class_acc if not math.isnan(a)]
    assert ours.macc == pytest.approx(sum(per_class_gt_only) / len(per_class_gt_only))
    assert float(macc.compute()) == pytest.approx(sum(per_class_gt_only) / (len(per_class_gt_only) + 1), abs=1e-6)


_DDP_WORKER = """
import sys, torch, torch.distributed as dist
from poodle.evaluation.metrics import ConfusionMatrix
dist.init_process_group("gloo")
rank = dist.get_rank()
g = torch.Generator().manual_seed(0)
target = torch.randint(0, 4, (4, 5, 5), generator=g)
pred = torch.randint(0, 4, (4, 5, 5), generator=g)
cm = ConfusionMatrix(4)
cm.update(pred[rank::2], target[rank::2])  # each rank sees half of the images
cm.all_reduce()
full = ConfusionMatrix(4)
full.update(pred, target)
assert torch.equal(cm.matrix, full.matrix), (rank, cm.matrix, full.matrix)
dist.destroy_process_group()
print("ok", rank)
"""


@pytest.mark.slow  # two fresh Python processes importing torch: ~20 s on two busy cores
def test_all_reduce_sums_over_ranks():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, "-c", _DDP_WORKER], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))  # fmt: skip
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
