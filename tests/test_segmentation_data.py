"""Segmentation datasets: tiny fixtures written in each real on-disk layout, label decoding and input errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from poodle.data.ade20k_classes import ADE20K_CLASSES, ADE20K_PALETTE
from poodle.data.cityscapes_labels import (
    CITYSCAPES_LABELS,
    CITYSCAPES_PALETTE,
    LABEL_ID_TO_TRAIN_ID,
    label_ids_to_train_ids,
)
from poodle.data.classes import BDD100K_CLASSES, BDD100K_PALETTE
from poodle.data.segmentation import (
    DATASET_NAMES,
    SegDatasetError,
    SegmentationDataset,
    build_segmentation_dataset,
    read_classes_txt,
)

H, W = 8, 16


def write_image(path: Path, seed: int = 0, size: tuple[int, int] = (H, W)) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return rgb


def write_mask(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(values, dtype=np.uint8), mode="L").save(path)


def ramp(lo: int, hi: int, size: tuple[int, int] = (H, W)) -> np.ndarray:
    """Every value of lo..hi at least once (row-major), then repeating."""
    n = size[0] * size[1]
    return (lo + np.arange(n) % (hi - lo + 1)).reshape(size).astype(np.uint8)


def make_bdd(root: Path, split: str = "val", names=("a", "b", "c")) -> dict[str, np.ndarray]:
    masks = {}
    for i, name in enumerate(names):
        write_image(root / "images" / "10k" / split / f"{name}.jpg", seed=i)
        m = ramp(0, 18)
        m[0, :3] = 255
        write_mask(root / "labels" / "sem_seg" / "masks" / split / f"{name}.png", m)
        masks[name] = m
    return masks


# ----------------------------------------------------------------------------------------------------- layouts


def test_bdd100k_layout(tmp_path):
    masks = make_bdd(tmp_path, "val")
    (tmp_path / "labels" / "sem_seg" / "colormaps" / "val").mkdir(parents=True)  # ignored alongside masks/
    ds = build_segmentation_dataset("bdd100k", tmp_path, "val")
    assert len(ds) == 3 and ds.names == ["a", "b", "c"]
    assert ds.info.classes == BDD100K_CLASSES and ds.info.palette == BDD100K_PALETTE and ds.info.ignore_index == 255
    assert [p.name for p in ds.image_paths] == ["a.jpg", "b.jpg", "c.jpg"]
    assert [p.name for p in ds.mask_paths] == ["a.png", "b.png", "c.png"]
    s = ds[1]
    assert s["name"] == "b"
    assert s["image"].dtype == torch.uint8 and s["image"].shape == (3, H, W)
    assert s["mask"].dtype == torch.int64 and s["mask"].shape == (H, W)
    assert np.array_equal(s["mask"].numpy(), masks["b"])  # no remapping


def test_image_is_rgb_channel_first(tmp_path):
    rgb = write_image(tmp_path / "images" / "10k" / "train" / "x.png")  # png: lossless, so exact comparison
    write_mask(tmp_path / "labels" / "sem_seg" / "masks" / "train" / "x.png", np.zeros((H, W)))
    s = build_segmentation_dataset("bdd100k", tmp_path, "train")[0]
    assert np.array_equal(s["image"].permute(1, 2, 0).numpy(), rgb)


def test_synthdrive_generator_output(tmp_path):
    from poodle.data.synthdrive import generate_dataset

    root = tmp_path / "sd"
    generate_dataset(
        root,
        resolution=(64, 128),
        train_images=2,
        val_images=1,
        train_videos=0,
        val_videos=0,
        flow_pairs=0,
        progress=False,
    )
    for split, n in (("train", 2), ("val", 1)):
        ds = build_segmentation_dataset("synthdrive", root, split)
        assert len(ds) == n and ds.info.name == "synthdrive" and ds.info.classes == BDD100K_CLASSES
        for s in ds:
            assert s["image"].shape == (3, 64, 128) and s["mask"].shape == (64, 128)
            values = set(s["mask"].unique().tolist())
            assert values <= set(range(19)) | {255} and len(values - {255}) >= 2


# Independent copy of cityscapesScripts' id -> trainId facts (the brief), to check the table pixel by pixel.
_EXPECTED_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12}
_EXPECTED_TRAIN_ID |= {26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def make_cityscapes(root: Path, split: str, city: str, frames, kind: str, values: np.ndarray) -> None:
    for f in frames:
        stem = f"{city}_{f:06d}_000019"
        write_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", seed=f)
        write_mask(root / "gtFine" / split / city / f"{stem}_gtFine_{kind}.png", values)
        # the other files of gtFine that must not be picked up as masks
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "gtFine" / split / city / f"{stem}_gtFine_color.png")
        write_mask(root / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png", np.zeros((H, W)))


def test_cityscapes_label_table():
    ids = {lab.id for lab in CITYSCAPES_LABELS}
    assert ids == set(range(34)) | {-1}
    plate = next(lab for lab in CITYSCAPES_LABELS if lab.name == "license plate")
    assert plate.id == -1 and plate.train_id == -1 and -1 not in LABEL_ID_TO_TRAIN_ID
    assert {i: t for i, t in LABEL_ID_TO_TRAIN_ID.items() if t != 255} == _EXPECTED_TRAIN_ID
    # palette in trainId order = the official label colours; BDD's differs only by swapping wall/fence.
    by_train = {lab.train_id: lab.color for lab in CITYSCAPES_LABELS if 0 <= lab.train_id < 19}
    assert CITYSCAPES_PALETTE == tuple(by_train[t] for t in range(19))
    assert [i for i in range(19) if CITYSCAPES_PALETTE[i] != BDD100K_PALETTE[i]] == [3, 4]
    with pytest.raises(ValueError, match=r"\[34\]"):
        label_ids_to_train_ids(np.array([[7, 34]]))


def test_cityscapes_label_ids_converted_pixel_by_pixel(tmp_path):
    label_ids = ramp(0, 33)  # all 34 ids present
    make_cityscapes(tmp_path, "val", "frankfurt", [1, 2], "labelIds", label_ids)
    ds = build_segmentation_dataset("cityscapes", tmp_path, "val")
    assert len(ds) == 2 and ds.names == ["frankfurt/frankfurt_000001_000019", "frankfurt/frankfurt_000002_000019"]
    assert all(p.name.endswith("_gtFine_labelIds.png") for p in ds.mask_paths)
    mask = ds[0]["mask"].numpy()
    for (y, x), raw in np.ndenumerate(label_ids):
        assert mask[y, x] == _EXPECTED_TRAIN_ID.get(int(raw), 255), (raw, mask[y, x])
    assert ds.info.palette == CITYSCAPES_PALETTE and ds.info.classes == BDD100K_CLASSES


def test_cityscapes_label_train_ids_used_as_is(tmp_path):
    train_ids = ramp(0, 18)
    train_ids[0, 0] = 255
    make_cityscapes(tmp_path, "train", "aachen", [0], "labelTrainIds", train_ids)
    # labelIds next to it must be ignored in favour of labelTrainIds
    write_mask(tmp_path / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png", np.full((H, W), 7))
    # another city with only labelIds: converted
    make_cityscapes(tmp_path, "train", "bochum", [5], "labelIds", np.full((H, W), 26))
    ds = build_segmentation_dataset("cityscapes", tmp_path, "train")
    assert ds.names == ["aachen/aachen_000000_000019", "bochum/bochum_000005_000019"]
    assert ds.mask_paths[0].name.endswith("_labelTrainIds.png")
    assert np.array_equal(ds[0]["mask"].numpy(), train_ids)
    assert (ds[1]["mask"] == 13).all()  # car


def test_cityscapes_invalid_label_id_reported(tmp_path):
    bad = np.full((H, W), 7, np.uint8)
    bad[0, :2] = 40
    make_cityscapes(tmp_path, "val", "lindau", [0], "labelIds", bad)
    with pytest.raises(SegDatasetError, match=r"labelIds 0-33.*40 \(2 px\)"):
        build_segmentation_dataset("cityscapes", tmp_path, "val")[0]


@pytest.mark.parametrize("nested", [True, False])
def test_ade20k_reduce_zero_label(tmp_path, nested):
    base = tmp_path / "ADEChallengeData2016" if nested else tmp_path
    raw = ramp(0, 150, (10, 16))  # every raw value 0..150
    for split, prefix in (("training", "train"), ("validation", "val")):
        for i in (1, 2):
            write_image(base / "images" / split / f"ADE_{prefix}_{i:08d}.jpg", seed=i, size=(10, 16))
            write_mask(base / "annotations" / split / f"ADE_{prefix}_{i:08d}.png", raw)
    ds = build_segmentation_dataset("ade20k", tmp_path, "val")
    assert len(ds) == 2 and ds.names[0] == "ADE_val_00000001"
    assert ds.info.classes == ADE20K_CLASSES and len(ds.info.classes) == 150 and len(ds.info.palette) == 150
    mask = ds[0]["mask"].numpy()
    expected = np.where(raw == 0, 255, raw.astype(np.int64) - 1)
    assert np.array_equal(mask, expected) and mask.max() == 255 and mask[raw == 150].tolist() == [149]
    assert len(build_segmentation_dataset("ade20k", tmp_path, "training")) == 2  # the folder name works too


def test_ade20k_classes_list():
    assert len(ADE20K_CLASSES) == 150 and len(set(ADE20K_CLASSES)) == 150 and len(ADE20K_PALETTE) == 150
    assert ADE20K_CLASSES[:4] == ("wall", "building", "sky", "floor") and ADE20K_CLASSES[-1] == "flag"
    assert ADE20K_CLASSES[12] == "person" and ADE20K_CLASSES[20] == "car" and ADE20K_CLASSES[136] == "traffic light"


def test_ade20k_value_above_150_is_an_error(tmp_path):
    raw = ramp(0, 150)
    raw[1, 1] = 151
    write_image(tmp_path / "images" / "validation" / "ADE_val_00000001.jpg")
    write_mask(tmp_path / "annotations" / "validation" / "ADE_val_00000001.png", raw)
    with pytest.raises(SegDatasetError, match=r"151 \(1 px\).*ADE_val_00000001|ADE_val_00000001.*151 \(1 px\)"):
        build_segmentation_dataset("ade20k", tmp_path, "val")[0]


def test_wtsem_layout_nested_and_split_alias(tmp_path):
    raw = ramp(0, 150)
    for video, frame in (("venice", 0), ("venice", 2), ("rome", 0)):
        write_image(tmp_path / "images" / "validation" / video / f"frame_{frame:05d}.jpg", seed=frame)
        write_mask(tmp_path / "annotations" / "validation" / video / f"frame_{frame:05d}.png", raw)
    ds = build_segmentation_dataset("wtsem", tmp_path, "val")  # val -> validation alias
    assert ds.names == ["rome/frame_00000", "venice/frame_00000", "venice/frame_00002"]
    assert ds.info.classes == ADE20K_CLASSES and ds.info.name == "wtsem"
    assert np.array_equal(ds[0]["mask"].numpy(), np.where(raw == 0, 255, raw.astype(np.int64) - 1))


def test_folder_layout_with_classes_txt(tmp_path):
    (tmp_path / "classes.txt").write_text("# my classes\nbackground,0,0,0\nroad surface,128,64,128\n\ncar\n")
    m = ramp(0, 2)
    m[0, 0] = 255
    write_image(tmp_path / "images" / "train" / "seq1" / "0001.png")
    write_mask(tmp_path / "masks" / "train" / "seq1" / "0001.png", m)
    ds = build_segmentation_dataset("folder", tmp_path, "train")
    assert ds.info.classes == ("background", "road surface", "car")
    assert ds.info.palette[:2] == ((0, 0, 0), (128, 64, 128)) and len(set(ds.info.palette)) == 3
    assert ds.names == ["seq1/0001"] and np.array_equal(ds[0]["mask"].numpy(), m)
    bad = m.copy()
    bad[2, :5] = 3
    write_mask(tmp_path / "masks" / "train" / "seq1" / "0001.png", bad)
    with pytest.raises(SegDatasetError, match=r"0-2 or 255.*3 \(5 px\)"):
        ds[0]


def test_folder_reduce_zero_label(tmp_path):
    (tmp_path / "classes.txt").write_text("# reduce_zero_label\ncat\ndog\n")
    classes, palette, reduce_zero = read_classes_txt(tmp_path / "classes.txt")
    assert classes == ("cat", "dog") and reduce_zero and len(palette) == 2
    write_image(tmp_path / "images" / "val" / "x.jpg")
    write_mask(tmp_path / "masks" / "val" / "x.png", ramp(0, 2))
    mask = build_segmentation_dataset("folder", tmp_path, "val")[0]["mask"].numpy()
    assert np.array_equal(mask, np.where(ramp(0, 2) == 0, 255, ramp(0, 2).astype(np.int64) - 1))


def test_transform_receives_index_and_arrays(tmp_path):
    make_bdd(tmp_path, "val")
    seen = []

    def transform(image, mask, index):
        seen.append((index, image.shape, image.dtype, mask.shape))
        return image[:, ::-1], mask[:, ::-1]

    ds = build_segmentation_dataset("bdd100k", tmp_path, "val", transform=transform)
    s = ds[2]
    assert seen == [(2, (H, W, 3), np.uint8, (H, W))] and s["mask"].dtype == torch.int64
    two_args = build_segmentation_dataset("bdd100k", tmp_path, "val", transform=lambda im, m: (im, m))
    assert two_args[0]["image"].shape == (3, H, W)


# ------------------------------------------------------------------------------------------------------ errors


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(SegDatasetError, match="choose one of bdd100k"):
        build_segmentation_dataset("pascal", tmp_path)
    assert DATASET_NAMES == ("bdd100k", "synthdrive", "cityscapes", "ade20k", "wtsem", "folder")


def test_missing_root(tmp_path):
    with pytest.raises(SegDatasetError, match="does not exist"):
        build_segmentation_dataset("bdd100k", tmp_path / "nope", "val")


def test_wrong_root_says_what_was_expected_and_found(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(SegDatasetError) as e:
        build_segmentation_dataset("bdd100k", tmp_path, "val")
    msg = str(e.value)
    assert "expected images/10k/ and labels/sem_seg/masks/" in msg and "found only: readme.txt, stuff/" in msg


def test_cityscapes_without_gtfine(tmp_path):
    write_image(tmp_path / "leftImg8bit" / "val" / "lindau" / "lindau_000000_000019_leftImg8bit.png")
    with pytest.raises(SegDatasetError, match="found leftImg8bit/ but no gtFine/"):
        build_segmentation_dataset("cityscapes", tmp_path, "val")


def test_wrong_layout_hint(tmp_path):
    make_cityscapes(tmp_path, "val", "lindau", [0], "labelIds", np.zeros((H, W)))
    with pytest.raises(SegDatasetError, match="looks like Cityscapes: use dataset 'cityscapes'"):
        build_segmentation_dataset("bdd100k", tmp_path, "val")
    make_bdd(tmp_path / "parent" / "bdd100k", "val")
    with pytest.raises(SegDatasetError, match="did you mean the root .*parent/bdd100k"):
        build_segmentation_dataset("bdd100k", tmp_path / "parent", "val")


def test_missing_split_lists_available(tmp_path):
    make_bdd(tmp_path, "train")
    make_bdd(tmp_path, "val")
    with pytest.raises(SegDatasetError, match="no split 'tset'.*available splits.*train, val"):
        build_segmentation_dataset("bdd100k", tmp_path, "tset")
    write_image(tmp_path / "images" / "10k" / "test" / "t.jpg")
    with pytest.raises(SegDatasetError, match="test labels are not public"):
        build_segmentation_dataset("bdd100k", tmp_path, "test")


def test_missing_masks_listed_with_counts(tmp_path):
    make_bdd(tmp_path, "val", names=[f"img{i}" for i in range(9)])
    for i in range(7):
        (tmp_path / "labels" / "sem_seg" / "masks" / "val" / f"img{i}.png").unlink()
    write_mask(tmp_path / "labels" / "sem_seg" / "masks" / "val" / "orphan.png", np.zeros((H, W)))
    with pytest.raises(SegDatasetError) as e:
        build_segmentation_dataset("bdd100k", tmp_path, "val")
    msg = str(e.value)
    assert "9 images in" in msg and "3 masks in" in msg
    assert "7 images have no mask (e.g. img0, img1, img2, img3, img4, ...)" in msg and "img5" not in msg
    assert "1 masks have no image (e.g. orphan)" in msg


def test_mask_size_mismatch_names_the_file(tmp_path):
    make_bdd(tmp_path, "val", names=["ok", "wrong"])
    write_mask(tmp_path / "labels" / "sem_seg" / "masks" / "val" / "wrong.png", np.zeros((H, W // 2)))
    ds = build_segmentation_dataset("bdd100k", tmp_path, "val")
    ds[0]
    with pytest.raises(SegDatasetError, match=r"wrong\.png is 8x8 \(HxW\) but its image .*wrong\.jpg is 8x16"):
        ds[1]


def test_out_of_range_values_reported_with_counts(tmp_path):
    m = np.zeros((H, W), np.uint8)
    m[0, :4] = 19
    m[1, :2] = 200
    make_bdd(tmp_path, "val", names=["x"])
    write_mask(tmp_path / "labels" / "sem_seg" / "masks" / "val" / "x.png", m)
    ds = build_segmentation_dataset("bdd100k", tmp_path, "val")
    with pytest.raises(SegDatasetError) as e:
        ds[0]
    msg = str(e.value)
    assert "x.png" in msg and "19 (4 px), 200 (2 px)" in msg and "0-18 or 255" in msg and "never clipped" in msg


def test_sixteen_bit_mask_values_reported(tmp_path):
    make_bdd(tmp_path, "val", names=["x"])
    m = np.zeros((H, W), np.uint16)
    m[0, 0] = 1000
    Image.fromarray(m).save(tmp_path / "labels" / "sem_seg" / "masks" / "val" / "x.png")
    with pytest.raises(SegDatasetError, match=r"1000 \(1 px\)"):
        build_segmentation_dataset("bdd100k", tmp_path, "val")[0]


def test_rgb_mask_is_rejected(tmp_path):
    make_bdd(tmp_path, "val", names=["x"])
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "labels" / "sem_seg" / "masks" / "val" / "x.png")
    with pytest.raises(SegDatasetError, match="RGB image; label masks must be single-channel"):
        build_segmentation_dataset("bdd100k", tmp_path, "val")[0]


@pytest.mark.parametrize("name", ["bdd100k", "ade20k", "wtsem", "folder"])
def test_empty_split(tmp_path, name):
    dirs = {
        "bdd100k": ("images/10k/val", "labels/sem_seg/masks/val"),
        "ade20k": ("images/validation", "annotations/validation"),
        "wtsem": ("images/val", "annotations/val"),
        "folder": ("images/val", "masks/val"),
    }[name]
    for d in dirs:
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "classes.txt").write_text("a\nb\n")
    with pytest.raises(SegDatasetError, match="the split is empty: no images"):
        build_segmentation_dataset(name, tmp_path, "val")


def test_folder_needs_classes_txt(tmp_path):
    write_image(tmp_path / "images" / "train" / "x.jpg")
    write_mask(tmp_path / "masks" / "train" / "x.png", np.zeros((H, W)))
    with pytest.raises(SegDatasetError, match="missing .*classes.txt"):
        build_segmentation_dataset("folder", tmp_path, "train")
    (tmp_path / "classes.txt").write_text("a\na\n")
    with pytest.raises(SegDatasetError, match="duplicate class names"):
        build_segmentation_dataset("folder", tmp_path, "train")


def test_dataset_constructor_checks():
    from poodle.data.segmentation import LabelDecoder, SegDatasetInfo

    info = SegDatasetInfo("x", ("a",), ((1, 2, 3),))
    with pytest.raises(SegDatasetError, match="empty"):
        SegmentationDataset([], [], info, LabelDecoder.identity(1))
    with pytest.raises(SegDatasetError, match="1 images but 2 masks"):
        SegmentationDataset(["a.jpg"], ["a.png", "b.png"], info, LabelDecoder.identity(1))
