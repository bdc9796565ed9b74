"""Segmentation readout transforms: geometry applied identically to image and mask, labels never interpolated."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from poodle.data.seg_transforms import SegEvalTransform, SegTrainTransform, collate_segmentation
from poodle.data.segmentation import build_segmentation_dataset


def column_pair(h: int = 8, w: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Image whose red channel is 10 * column and mask = column, so any geometry mismatch shows."""
    mask = np.tile(np.arange(w, dtype=np.uint8), (h, 1))
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = mask * 10
    image[..., 1] = np.arange(h, dtype=np.uint8)[:, None] * 10
    return image, mask


def test_flip_applied_to_both():
    image, mask = column_pair()
    t = SegTrainTransform(crop_size=(8, 16), scale_range=(1.0, 1.0), seed=0)
    flipped = 0
    for i in range(20):
        im, m = t(image, mask, i)
        assert np.array_equal(im[..., 0], m.astype(np.uint8) * 10)
        flipped += int(m[0, 0] == 15)
        assert m[0, 0] in (0, 15)
    assert 0 < flipped < 20
    never = SegTrainTransform(crop_size=(8, 16), scale_range=(1.0, 1.0), hflip=False, seed=0)
    assert all(never(image, mask, i)[1][0, 0] == 0 for i in range(10))


def test_crop_is_aligned_between_image_and_mask():
    image, mask = column_pair(32, 64)
    mask = mask + (np.arange(32, dtype=np.uint8)[:, None] % 2)  # rows differ too
    image[..., 0] = mask * 3
    t = SegTrainTransform(crop_size=(8, 8), scale_range=(1.0, 1.0), hflip=False, seed=1)
    for i in range(10):
        im, m = t(image, mask, i)
        assert im.shape == (8, 8, 3) and m.shape == (8, 8)
        assert np.array_equal(im[..., 0], m * 3)


def test_padding_uses_zero_for_image_and_ignore_for_mask():
    image, mask = column_pair(8, 16)
    t = SegTrainTransform(crop_size=(12, 20), scale_range=(1.0, 1.0), hflip=False, seed=0)
    im, m = t(image, mask, 0)
    assert im.shape == (12, 20, 3) and m.shape == (12, 20)
    assert np.array_equal(im[:8, :16], image) and np.array_equal(m[:8, :16], mask)
    assert (m[8:] == 255).all() and (m[:, 16:] == 255).all()
    assert (im[8:] == 0).all() and (im[:, 16:] == 0).all()


def test_masks_resized_nearest_no_new_labels():
    rng = np.random.default_rng(0)
    mask = rng.choice(np.array([3, 7, 255], np.uint8), size=(24, 40))
    image = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    t = SegTrainTransform(crop_size=(16, 16), scale_range=(0.37, 2.3), seed=3)
    sizes = set()
    for i in range(30):
        im, m = t(image, mask, i)
        assert set(np.unique(m).tolist()) <= {3, 7, 255}
        assert im.dtype == np.uint8 and m.dtype == mask.dtype
        sizes.add(m.shape)
    # Upsampling by exactly 2: every output label is the source label of its pixel block.
    up = SegTrainTransform(crop_size=(48, 80), scale_range=(2.0, 2.0), hflip=False, seed=0)
    _, m = up(image, mask, 0)
    assert np.array_equal(m, np.repeat(np.repeat(mask, 2, 0), 2, 1))


def test_base_size_sets_the_shorter_side():
    image, mask = column_pair(8, 16)
    # base_size 32 * ratio 0.5 -> shorter side 16 -> 16x32; a 16x32 crop is then the whole image (no padding).
    t = SegTrainTransform(crop_size=(16, 32), scale_range=(0.5, 0.5), base_size=32, hflip=False, seed=0)
    im, m = t(image, mask, 0)
    assert (m != 255).all() and np.array_equal(m, np.repeat(np.repeat(mask, 2, 0), 2, 1))
    assert im.shape == (16, 32, 3)


def test_determinism_with_seed_and_index():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    mask = rng.integers(0, 19, (20, 30), dtype=np.uint8)

    def run(t, i):
        return t(image, mask, i)

    a, b = SegTrainTransform((8, 8), seed=5), SegTrainTransform((8, 8), seed=5)
    for i in range(5):
        assert all(np.array_equal(x, y) for x, y in zip(run(a, i), run(b, i)))
    outs = [run(a, i)[0] for i in range(8)]
    assert any(not np.array_equal(outs[0], o) for o in outs[1:])  # different indices, different draws
    first = run(a, 0)[0]
    a.set_epoch(1)
    assert not np.array_equal(first, run(a, 0)[0])  # epoch changes the draw
    other_seed = SegTrainTransform((8, 8), seed=6)
    assert any(not np.array_equal(run(other_seed, i)[0], outs[i]) for i in range(8))


def test_cat_max_ratio_prefers_mixed_crops():
    mask = np.zeros((16, 64), np.uint8)
    mask[:, 56:] = 1
    image = np.zeros((16, 64, 3), np.uint8)
    t = SegTrainTransform((16, 16), scale_range=(1.0, 1.0), hflip=False, seed=0, cat_max_ratio=0.75)
    mixed = sum(len(np.unique(t(image, mask, i)[1])) > 1 for i in range(20))
    assert mixed >= 10  # a single random crop is balanced in only 5 of its 49 positions


def test_bad_arguments():
    with pytest.raises(ValueError, match="crop_size"):
        SegTrainTransform((0, 8))
    with pytest.raises(ValueError, match="scale_range"):
        SegTrainTransform((8, 8), scale_range=(2.0, 1.0))


def test_eval_transform_keeps_mask():
    image, mask = column_pair(8, 16)
    im, m = SegEvalTransform()(image, mask, 0)
    assert im is image and m is mask
    im, m = SegEvalTransform(resize=16)(image, mask, 0)
    assert im.shape == (16, 32, 3) and m is mask
    im, m = SegEvalTransform(resize=(4, 6))(image, mask)
    assert im.shape == (4, 6, 3) and m.shape == (8, 16)


def test_collate_stacks_and_pads():
    same = [
        {"image": torch.zeros(3, 4, 5, dtype=torch.uint8), "mask": torch.ones(4, 5, dtype=torch.int64), "name": "a"},
        {"image": torch.ones(3, 4, 5, dtype=torch.uint8), "mask": torch.zeros(4, 5, dtype=torch.int64), "name": "b"},
    ]
    batch = collate_segmentation(same)
    assert batch["image"].shape == (2, 3, 4, 5) and batch["image"].dtype == torch.uint8
    assert batch["mask"].shape == (2, 4, 5) and batch["mask"].dtype == torch.int64 and batch["name"] == ["a", "b"]
    mixed = [same[0], {"image": torch.ones(3, 6, 3, dtype=torch.uint8), "mask": torch.ones(6, 3), "name": "c"}]
    batch = collate_segmentation(mixed)
    assert batch["image"].shape == (2, 3, 6, 5) and batch["mask"].shape == (2, 6, 5)
    assert batch["image_size"].tolist() == [[4, 5], [6, 3]] and batch["mask_size"].tolist() == [[4, 5], [6, 3]]
    assert (batch["mask"][0, 4:] == 255).all() and (batch["mask"][1, :, 3:] == 255).all()
    assert (batch["image"][1, :, :, 3:] == 0).all()


def test_dataset_with_train_transform_through_dataloader(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        (tmp_path / "images/10k/train").mkdir(parents=True, exist_ok=True)
        (tmp_path / "labels/sem_seg/masks/train").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 16, 3), dtype=np.uint8)).save(tmp_path / f"images/10k/train/{i}.jpg")
        Image.fromarray(rng.integers(0, 19, (8, 16), dtype=np.uint8)).save(
            tmp_path / f"labels/sem_seg/masks/train/{i}.png"
        )
    t = SegTrainTransform((6, 6), seed=0)
    ds = build_segmentation_dataset("bdd100k", tmp_path, "train", transform=t)
    ds.set_epoch(3)
    assert t.epoch == 3
    batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate_segmentation)))
    assert batch["image"].shape == (3, 3, 6, 6) and batch["mask"].shape == (3, 6, 6)
    assert batch["mask"].dtype == torch.int64 and int(batch["mask"].max()) <= 255
    again = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate_segmentation)))
    assert torch.equal(batch["image"], again["image"]) and torch.equal(batch["mask"], again["mask"])
    eval_ds = build_segmentation_dataset("bdd100k", tmp_path, "train", transform=SegEvalTransform(resize=4))
    s = eval_ds[0]
    assert s["image"].shape == (3, 4, 8) and s["mask"].shape == (8, 16)


@pytest.mark.parametrize("size", [(37, 61), (60, 100), (20, 33)])
def test_resized_crop_matches_resize_then_crop(size):
    import cv2

    from poodle.data.seg_transforms import _resize, _resized_crop

    rng = np.random.default_rng(0)
    image = cv2.resize(rng.integers(0, 256, (6, 10, 3), dtype=np.uint8), (40, 24))  # smooth-ish content
    mask = rng.integers(0, 19, (24, 40), dtype=np.uint8)
    box = (3, 5, min(16, size[0] - 3), min(20, size[1] - 5))
    y0, x0, ch, cw = box
    im, m = _resized_crop(image, mask, size, box)
    ref_im = cv2.resize(image, size[::-1], interpolation=cv2.INTER_LINEAR)[y0 : y0 + ch, x0 : x0 + cw]
    ref_m = _resize(mask, size, nearest=True)[y0 : y0 + ch, x0 : x0 + cw]
    assert np.array_equal(m, ref_m)
    assert np.abs(im.astype(int) - ref_im.astype(int)).max() <= 1
