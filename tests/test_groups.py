import math

import numpy as np
import pytest
import torch
from PIL import Image

from poodle.data.class_stats import ClassRow, ClassStats, class_statistics
from poodle.data.classes import BDD100K_CLASSES
from poodle.evaluation.groups import (
    BDD100K_GROUPS,
    BDD100K_SMALL,
    ClassGroups,
    dataset_statistics,
    group_metrics,
    groups_for_dataset,
    mask_files_statistics,
)
from poodle.evaluation.metrics import ConfusionMatrix, SegMetrics

# Spec 6.6 / paper Table 10, in the table's column order.
TABLE10_ORDER = (
    "road", "sky", "building", "vegetation", "car", "bus", "fence", "truck", "wall", "sidewalk", "terrain", "train",
    "pole", "bicycle", "person", "motorcycle", "traffic sign", "rider", "traffic light",
)  # fmt: skip
TABLE10_AVG_PIX = (22.0, 18.2, 15.0, 14.4, 8.4, 3.7, 3.4, 3.2, 3.1, 3.1, 2.8, 2.1, 1.0, 0.8, 0.7, 0.6, 0.5, 0.4, 0.4)
TABLE10_TOTAL_PIX = (21.3, 17.3, 13.2, 13.2, 8.1, 0.6, 1.0, 1.0, 0.5, 2.0, 1.0, 0.0, 0.9, 0.1, 0.3, 0.0, 0.3, 0.0, 0.2)
TABLE10_IMAGES = (
    96.5, 94.8, 88.4, 91.7, 97.3, 15.0, 30.6, 30.5, 15.4, 66.7, 36.7, 0.7, 95.0, 6.4, 34.7, 3.8, 75.3, 5.2, 47.1,
)  # fmt: skip
TABLE10_SIZE = "LLLLLLLLLLLLSSSSSSS"
TABLE10_FREQ = "CCCCCRCCRCCRCRCRCRC"

# Spec Table 9 rows (Table 10 column order) and the matching Table 3 rows (All, Small, Large, Rare, Common).
TABLE9 = {
    "PooDLe (BDD)": (
        (91.3, 93.5, 77.0, 80.4, 81.7, 34.0, 29.4, 24.3, 17.2, 49.6, 38.1, 0, 24.3, 18.0, 35.2, 2.9, 26.6, 0, 21.2),
        (39.2, 18.3, 51.4, 12.0, 51.8),
    ),
    "Supervised (IN1K)": (
        (79.8, 88.8, 70.0, 77.2, 72.6, 24.9, 21.8, 14.4, 7.2, 18.4, 31.8, 0, 22.8, 36.8, 40.2, 19.5, 31.8, 8.2, 31.2),
        (36.7, 27.2, 42.2, 16.1, 46.2),
    ),
}


def _table10_stats() -> ClassStats:
    by_name = {
        n: ClassRow(n, a, t, i, s, f)
        for n, a, t, i, s, f in zip(
            TABLE10_ORDER, TABLE10_AVG_PIX, TABLE10_TOTAL_PIX, TABLE10_IMAGES, TABLE10_SIZE, TABLE10_FREQ
        )
    }
    return ClassStats(rows=[by_name[n] for n in BDD100K_CLASSES], images=7000, pixels=7000 * 720 * 1280, ignore_pct=0)


def test_bdd100k_groups_are_table10():
    names = lambda idx: {BDD100K_CLASSES[i] for i in idx}  # noqa: E731
    assert names(BDD100K_GROUPS.small) == {
        "pole", "bicycle", "person", "motorcycle", "traffic sign", "rider", "traffic light",
    }  # fmt: skip
    assert names(BDD100K_GROUPS.rare) == {"bus", "wall", "train", "bicycle", "motorcycle", "rider"}
    assert len(BDD100K_GROUPS.large) == 12 and len(BDD100K_GROUPS.common) == 13
    assert set(BDD100K_GROUPS.small) | set(BDD100K_GROUPS.large) == set(range(19))
    assert set(BDD100K_GROUPS.rare) | set(BDD100K_GROUPS.common) == set(range(19))


def test_table10_numbers_reproduce_the_fixed_assignment():
    stats = _table10_stats()
    # Reassign the rows' size/frequency letters wrongly: from_stats must use the numbers, not the letters.
    for r in stats.rows:
        r.size, r.frequency = "L", "C"
    assert ClassGroups.from_stats(stats) == BDD100K_GROUPS
    # Matching by name works whatever the row order (Table 10 is sorted by pixel share).
    stats.rows.sort(key=lambda r: -r.avg_pixel_pct)
    assert ClassGroups.from_stats(stats, BDD100K_CLASSES) == BDD100K_GROUPS
    assert groups_for_dataset("bdd100k", BDD100K_CLASSES) is BDD100K_GROUPS
    with pytest.raises(ValueError, match="statistics"):
        groups_for_dataset("cityscapes", BDD100K_CLASSES)
    assert groups_for_dataset("cityscapes", BDD100K_CLASSES, stats) == BDD100K_GROUPS


def _table10_label_maps(n_images: int = 1000, size: tuple[int, int] = (50, 100)) -> list[np.ndarray]:
    """Label maps with Table 10's columns: class c is in round(image_pct * n / 100) images, each time covering
    exactly its "Avg Pix. % / Im." share (5000-px maps: 0.1 % = 5 px); the remaining pixels are ignore (255).

    Each class goes to the currently least-filled images, so no map needs more than 100 % (the column sums to
    103.8 %: the shares of one image cannot all be present at once)."""
    pixels = size[0] * size[1]
    fill = np.zeros(n_images, dtype=np.int64)
    members: dict[int, np.ndarray] = {}
    order = sorted(range(19), key=lambda k: -TABLE10_AVG_PIX[k])
    for k in order:
        count = round(TABLE10_IMAGES[k] * n_images / 100)
        px = round(TABLE10_AVG_PIX[k] * pixels / 100)
        chosen = np.argsort(fill, kind="stable")[:count]
        fill[chosen] += px
        members[k] = chosen
    assert fill.max() <= pixels
    maps = [np.full(pixels, 255, np.uint8) for _ in range(n_images)]
    cursor = np.zeros(n_images, dtype=np.int64)
    for k in order:
        cls = BDD100K_CLASSES.index(TABLE10_ORDER[k])
        px = round(TABLE10_AVG_PIX[k] * pixels / 100)
        for i in members[k]:
            maps[i][cursor[i] : cursor[i] + px] = cls
            cursor[i] += px
    return [m.reshape(size) for m in maps]


def test_label_maps_built_from_table10_give_table10_groups():
    maps = _table10_label_maps()
    stats = class_statistics(maps, BDD100K_CLASSES)
    rows = {r.name: r for r in stats.rows}
    for name, avg, images in zip(TABLE10_ORDER, TABLE10_AVG_PIX, TABLE10_IMAGES):
        assert rows[name].avg_pixel_pct == pytest.approx(avg) and rows[name].image_pct == pytest.approx(images)
    # "Total % of Pix." follows from the other two columns (all maps have one size), to the table's rounding.
    assert [rows[n].total_pixel_pct for n in TABLE10_ORDER] == pytest.approx(TABLE10_TOTAL_PIX, abs=0.1)
    groups = ClassGroups.from_stats(stats)
    assert groups == BDD100K_GROUPS
    assert "".join(rows[n].size for n in TABLE10_ORDER) == TABLE10_SIZE
    assert "".join(rows[n].frequency for n in TABLE10_ORDER) == TABLE10_FREQ
    # The test can fail: the old rule (share averaged over ALL images) makes wall, truck, bus and train Small too.
    old_avg = np.mean([np.bincount(m.ravel(), minlength=256)[:19] / m.size for m in maps], axis=0) * 100
    old_small = {BDD100K_CLASSES[i] for i in range(19) if old_avg[i] <= 1.0}
    assert old_small == set(BDD100K_SMALL) | {"wall", "truck", "bus", "train"}
    assert len(old_small) == 11


def test_groups_use_unrounded_statistics():
    # 25,001 of 2,500,000 px = 1.00004 %: rounded to 4 decimals that is 1.0 (Small); unrounded it is Large.
    lab = np.zeros((1000, 2500), np.uint8)
    lab.ravel()[:25001] = 1
    stats = class_statistics([lab], ("a", "b"))
    assert stats.rows[1].avg_pixel_pct > 1.0 and round(stats.rows[1].avg_pixel_pct, 4) == 1.0
    assert ClassGroups.from_stats(stats).large == (0, 1)


@pytest.mark.parametrize("method", list(TABLE9))
def test_table9_per_class_iou_reproduces_table3(method):
    per_class, table3 = TABLE9[method]
    by_name = dict(zip(TABLE10_ORDER, per_class))
    iou = [by_name[n] / 100 for n in BDD100K_CLASSES]
    m = SegMetrics(miou=sum(iou) / 19, aacc=float("nan"), macc=float("nan"), per_class_iou=iou,
                   per_class_acc=[float("nan")] * 19, num_pixels=0)  # fmt: skip
    g = group_metrics(m, BDD100K_GROUPS)
    got = [100 * g["mIoU"][k] for k in ("All", "Small", "Large", "Rare", "Common")]
    assert got == pytest.approx(table3, abs=0.1)
    assert all(math.isnan(v) for v in g["Acc"].values())  # IoUs only, no pixel counts -> no accuracy


def test_group_pixel_accuracy_is_over_the_groups_gt_pixels():
    # 3 classes; group Small = {1, 2}. GT pixels: class 0: 4 (3 right), class 1: 2 (1 right), class 2: 2 (2 right).
    target = torch.tensor([[0, 0, 0, 0, 1, 1, 2, 2]])
    pred = torch.tensor([[0, 0, 0, 1, 1, 0, 2, 2]])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    groups = ClassGroups(small=(1, 2), large=(0,), rare=(1,), common=(0, 2))
    g = group_metrics(cm.compute(), groups)
    assert g["Acc"]["Small"] == pytest.approx(3 / 4)  # (1 + 2) / (2 + 2)
    assert g["Acc"]["Large"] == pytest.approx(3 / 4)
    assert g["Acc"]["Rare"] == pytest.approx(1 / 2)
    assert g["Acc"]["Common"] == pytest.approx(5 / 6)  # (3 + 2) / (4 + 2): pixel-weighted, mean of accs would be 7/8
    assert g["Acc"]["All"] == pytest.approx(6 / 8)
    iou = cm.compute().per_class_iou  # IoU: 3/5, 1/3, 1
    assert g["mIoU"]["Common"] == pytest.approx((iou[0] + iou[2]) / 2)
    assert g["mIoU"]["All"] == pytest.approx(sum(iou) / 3)


def test_group_with_no_gt_pixels_and_bad_indices():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([[0, 0]]), torch.tensor([[0, 0]]))
    g = group_metrics(cm.compute(), ClassGroups(small=(1, 2), large=(0,), rare=(2,), common=(0, 1)))
    assert math.isnan(g["mIoU"]["Small"]) and math.isnan(g["Acc"]["Small"])
    with pytest.raises(ValueError, match="outside"):
        group_metrics(cm.compute(), ClassGroups(small=(5,), large=(0,), rare=(), common=(0,)))


def test_groups_dict_round_trip():
    d = BDD100K_GROUPS.to_dict(BDD100K_CLASSES)
    assert "pole" in d["small"]
    assert ClassGroups.from_dict(d, BDD100K_CLASSES) == BDD100K_GROUPS
    assert ClassGroups.from_dict(BDD100K_GROUPS.to_dict()) == BDD100K_GROUPS


def _write_masks(folder, maps):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, m in enumerate(maps):
        p = folder / f"{i:03d}.png"
        Image.fromarray(m.astype(np.uint8)).save(p)
        paths.append(p)
    return paths


def _toy_maps():
    # 2 classes + ignore on 10x10 maps: "a" everywhere, "b" one pixel (1 %: Small) in 1 of 5 maps (20 %: Rare).
    maps = [np.zeros((10, 10), np.uint8) for _ in range(5)]
    maps[0][0, 0] = 1
    maps[1][9, :] = 255
    return maps


def test_mask_files_statistics_and_reduce_zero_label(tmp_path):
    maps = _toy_maps()
    paths = _write_masks(tmp_path / "m", maps)
    stats = mask_files_statistics(paths, ("a", "b"))
    rows = {r.name: r for r in stats.rows}
    assert rows["b"].avg_pixel_pct == 1.0 and rows["b"].image_pct == 20.0  # exact: both on the strict threshold
    assert ClassGroups.from_stats(stats) == ClassGroups(small=(1,), large=(0,), rare=(1,), common=(0,))
    # ADE-style encoding: 0 = other (ignored), k -> k - 1.
    ade = _write_masks(tmp_path / "ade", [np.where(m == 255, 0, m + 1) for m in maps])
    assert mask_files_statistics(ade, ("a", "b"), reduce_zero_label=True).rows == stats.rows


class _FakeInfo:
    classes = ("a", "b")
    ignore_index = 255


class _FakeDataset:
    """Minimal stand-in for the build_segmentation_dataset API (items, info, optionally mask_paths)."""

    def __init__(self, maps, mask_paths=None):
        self.maps, self.info = maps, _FakeInfo()
        if mask_paths is not None:
            self.mask_paths = mask_paths

    def __len__(self):
        return len(self.maps)

    def __getitem__(self, i):
        return {"image": None, "mask": torch.from_numpy(self.maps[i].astype(np.int64)), "name": str(i)}


def test_dataset_statistics_paths(tmp_path):
    maps = _toy_maps()
    ref = mask_files_statistics(_write_masks(tmp_path / "m", maps), ("a", "b"))
    assert dataset_statistics(_FakeDataset(maps)).rows == ref.rows  # items
    files = _write_masks(tmp_path / "f", maps)
    assert dataset_statistics(_FakeDataset(maps, files)).rows == ref.rows  # direct file reads
    # Files that do not decode to the loader's masks (another encoding): falls back to the items.
    shifted = _write_masks(tmp_path / "s", [np.where(m == 255, 0, m + 1) for m in maps])
    assert dataset_statistics(_FakeDataset(maps, shifted)).rows == ref.rows
    assert dataset_statistics(_FakeDataset(maps), limit=1).images == 1


def test_dataset_statistics_of_a_segmentation_dataset_checks_and_counts(tmp_path):
    from poodle.data.segmentation import SegDatasetError, build_segmentation_dataset
    from test_segmentation_data import make_bdd, write_mask

    make_bdd(tmp_path, "train", names=["a", "b", "c"])
    ds = build_segmentation_dataset("bdd100k", tmp_path, "train")
    ref = class_statistics([ds.load(i)[1] for i in range(3)], BDD100K_CLASSES)
    assert dataset_statistics(ds).rows == ref.rows and dataset_statistics(ds, limit=2).images == 2
    write_mask(tmp_path / "labels" / "sem_seg" / "masks" / "train" / "b.png", np.full((8, 16), 19))
    with pytest.raises(SegDatasetError, match=r"b\.png has label values .*19 \(128 px\)"):
        dataset_statistics(ds)
