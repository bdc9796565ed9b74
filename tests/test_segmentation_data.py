"""Segmentation datasets: tiny fixtures written in each real on-disk layout, label decoding and input errors."""

from __future__ import annotations

import re
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
    LabelDecoder,
    SegDatasetError,
    SegmentationDataset,
    build_segmentation_dataset,
    check_segmentation_data,
    read_classes_txt,
    scan_masks,
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
    # palette in trainId order = the official label colours, which BDD100K uses too (bdd100k toolkit, mmseg).
    by_train = {lab.train_id: lab.color for lab in CITYSCAPES_LABELS if 0 <= lab.train_id < 19}
    assert CITYSCAPES_PALETTE == tuple(by_train[t] for t in range(19)) == BDD100K_PALETTE
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
    raw = ramp(0, 150, (10, 16))  # 0 and 150 present: the ADE-style 1-150 encoding
    for video, frame in (("venice", 0), ("venice", 2), ("rome", 0)):
        write_image(tmp_path / "images" / "validation" / video / f"frame_{frame:05d}.jpg", seed=frame, size=(10, 16))
        write_mask(tmp_path / "annotations" / "validation" / video / f"frame_{frame:05d}.png", raw)
    ds = build_segmentation_dataset("wtsem", tmp_path, "val")  # val -> validation alias
    assert ds.names == ["rome/frame_00000", "venice/frame_00000", "venice/frame_00002"]
    assert ds.info.classes == ADE20K_CLASSES and ds.info.name == "wtsem"
    # No train split here: the encoding is read off the split itself, and says so.
    assert ds.info.label_encoding == "one_based" and "value 150 occurs" in ds.info.encoding_note
    assert "in 3 val masks" in ds.info.encoding_note
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


# -------------------------------------------------------------------------------- checking masks up front


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def make_bdd_splits(root: Path, train=("t0", "t1", "t2"), val=("v0", "v1")) -> None:
    make_bdd(root, "train", names=train)
    make_bdd(root, "val", names=val)


def test_check_passes_and_counts_decoded_labels(tmp_path):
    make_bdd_splits(tmp_path)
    check = check_segmentation_data("bdd100k", tmp_path)
    assert check.masks == {"train": 3, "val": 2} and check.info.classes == BDD100K_CLASSES
    m = make_bdd(tmp_path / "ref", "val", names=["x"])["x"]  # the fixture's mask: ramp 0-18, 3 px of 255
    expected = np.bincount(m.ravel(), minlength=256)
    assert np.array_equal(check.histograms["val"][0], expected) and list(check.sizes["train"]) == [H * W] * 3
    assert check.to_dict()["masks_checked"] == {"train": 3, "val": 2} and "checked 3 train + 2 val" in check.summary()


def test_bad_val_value_found_before_training_names_the_file(tmp_path):
    make_bdd_splits(tmp_path)
    bad = ramp(0, 18)
    bad[2, 3] = 37
    write_mask(tmp_path / "labels" / "sem_seg" / "masks" / "val" / "v1.png", bad)
    with pytest.raises(SegDatasetError) as e:
        check_segmentation_data("bdd100k", tmp_path)
    msg = _one_line(e)
    assert "v1.png" in msg and "37 (1 px)" in msg and "0-18 or 255 (ignore)" in msg and "never clipped" in msg


def test_truncated_mask_is_one_line(tmp_path):
    make_bdd_splits(tmp_path)
    path = tmp_path / "labels" / "sem_seg" / "masks" / "train" / "t1.png"
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(SegDatasetError) as e:
        check_segmentation_data("bdd100k", tmp_path)
    msg = _one_line(e)
    assert "t1.png" in msg and "truncated" in msg and "extract it again" in msg


def test_rgb_mask_and_16_bit_values_are_refused_by_the_scan(tmp_path):
    make_bdd_splits(tmp_path)
    path = tmp_path / "labels" / "sem_seg" / "masks" / "train" / "t2.png"
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(path)
    with pytest.raises(SegDatasetError, match=r"t2\.png is a RGB image; label masks must be single-channel"):
        check_segmentation_data("bdd100k", tmp_path)
    m = np.zeros((H, W), np.uint16)
    m[0, 0] = 1000
    Image.fromarray(m).save(path)
    with pytest.raises(SegDatasetError, match=r"t2\.png has label values .*1000 \(1 px\)"):
        check_segmentation_data("bdd100k", tmp_path)


def test_scan_checks_size_from_the_image_header(tmp_path):
    make_bdd_splits(tmp_path)
    write_mask(tmp_path / "labels" / "sem_seg" / "masks" / "val" / "v0.png", np.zeros((H, W // 2)))
    with pytest.raises(SegDatasetError) as e:
        check_segmentation_data("bdd100k", tmp_path)
    assert re.search(r"v0\.png is 8x8 \(HxW\) but its image .*v0\.jpg is 8x16", _one_line(e))


def test_scan_with_worker_processes_equals_in_process(tmp_path):
    make_bdd(tmp_path, "val", names=[f"m{i:03d}" for i in range(70)])  # enough to start workers
    ds = build_segmentation_dataset("bdd100k", tmp_path, "val")
    one, many = scan_masks(ds), scan_masks(ds, workers=2)
    assert np.array_equal(one.histograms, many.histograms) and np.array_equal(one.sizes, many.sizes)
    bad = ramp(0, 18)
    bad[0, 0] = 99
    write_mask(tmp_path / "labels" / "sem_seg" / "masks" / "val" / "m050.png", np.zeros((3, 3)))
    with pytest.raises(SegDatasetError) as e:  # an error inside a worker arrives as the same single line
        scan_masks(ds, workers=2)
    assert "m050.png is 3x3" in _one_line(e)


def test_reduce_zero_label_keeps_255_as_ignore(tmp_path):
    from poodle.evaluation.groups import mask_files_statistics

    raw = np.array([[0, 1, 2, 255]], np.uint8)
    assert LabelDecoder.reduce_zero_label(2)(raw).tolist() == [[255, 0, 1, 255]]
    write_mask(tmp_path / "m.png", raw)
    stats = mask_files_statistics([tmp_path / "m.png"], ("a", "b"), reduce_zero_label=True)
    assert stats.ignore_pct == 50.0  # raw 0 and raw 255; a raw 255 used to become 254 and be counted nowhere
    assert [r.total_pixel_pct for r in stats.rows] == [25.0, 25.0]
    # Through the folder layout and the scan as well.
    (tmp_path / "f" / "classes.txt").parent.mkdir()
    (tmp_path / "f" / "classes.txt").write_text("# reduce_zero_label\na\nb\n")
    write_image(tmp_path / "f" / "images" / "train" / "x.png", size=(1, 4))
    write_mask(tmp_path / "f" / "masks" / "train" / "x.png", raw)
    check = check_segmentation_data("folder", tmp_path / "f", ("train",))
    assert check.histograms["train"][0, [0, 1, 254, 255]].tolist() == [1, 1, 0, 2]
    assert build_segmentation_dataset("folder", tmp_path / "f", "train")[0]["mask"].tolist() == [[255, 0, 1, 255]]


# WT-Sem's label encoding: the public release (agentic-learning-ai-lab/Walking-Tours-Semantic) does not document it.


def make_wtsem(root: Path, train_masks: list[np.ndarray], val_mask: np.ndarray | None = None) -> None:
    for i, m in enumerate(train_masks):
        write_image(root / "images" / "train" / "venice" / f"f{i}.jpg", seed=i, size=m.shape)
        write_mask(root / "annotations" / "train" / "venice" / f"f{i}.png", m)
    val_mask = train_masks[0] if val_mask is None else val_mask
    write_image(root / "images" / "val" / "rome" / "f0.jpg", size=val_mask.shape)
    write_mask(root / "annotations" / "val" / "rome" / "f0.png", val_mask)


def test_wtsem_zero_based_detected(tmp_path):
    make_wtsem(tmp_path, [ramp(0, 149, (10, 16)), ramp(3, 40, (10, 16))])
    check = check_segmentation_data("wtsem", tmp_path)
    assert check.label_encoding == "zero_based"
    assert "detected: 0 occurs" in check.info.encoding_note and "largest value is 149" in check.info.encoding_note
    assert check.to_dict()["label_encoding"]["encoding"] == "zero_based"
    assert check.histograms["train"][0, :150].tolist() == np.bincount(ramp(0, 149, (10, 16)).ravel()).tolist()
    ds = build_segmentation_dataset("wtsem", tmp_path, "val")  # auto on its own: the same answer from train
    assert ds.info.label_encoding == "zero_based" and ds[0]["mask"].max() == 149


@pytest.mark.parametrize("lo", [0, 1])
def test_wtsem_one_based_detected(tmp_path, lo):
    make_wtsem(tmp_path, [ramp(lo, 150, (10, 16))])
    check = check_segmentation_data("wtsem", tmp_path, ("train",))
    assert check.label_encoding == "one_based"
    assert "value 150 occurs" in check.info.encoding_note
    h = check.histograms["train"][0]
    assert h[149] == np.sum(ramp(lo, 150, (10, 16)) == 150) and h[255] == np.sum(ramp(lo, 150, (10, 16)) == 0)
    # With no 0 and no 150 (values 1-149) the masks still read as one_based: 0-based masks would hold 'wall' (0).
    make_wtsem(tmp_path / "b", [ramp(1, 149, (10, 16))])
    no_zero = check_segmentation_data("wtsem", tmp_path / "b", ("train",))
    assert no_zero.label_encoding == "one_based" and "no pixel is 0" in no_zero.info.encoding_note


def test_wtsem_explicit_encoding_checked_against_the_masks(tmp_path):
    make_wtsem(tmp_path, [ramp(0, 149, (10, 16)), ramp(0, 150, (10, 16))])
    with pytest.raises(SegDatasetError) as e:
        check_segmentation_data("wtsem", tmp_path, encoding="zero_based")
    msg = _one_line(e)
    assert "f1.png" in msg and "value 150 is not a class id with label_encoding=zero_based" in msg
    assert "use label_encoding=one_based or auto" in msg
    ok = check_segmentation_data("wtsem", tmp_path, encoding="one_based")
    assert ok.label_encoding == "one_based" and "set explicitly; the masks agree" in ok.info.encoding_note
    # An explicit choice that the masks do not contradict is kept, with what auto would have said.
    make_wtsem(tmp_path / "z", [ramp(0, 149, (10, 16))])
    kept = check_segmentation_data("wtsem", tmp_path / "z", encoding="one_based")
    assert kept.label_encoding == "one_based" and "auto-detection would choose zero_based" in kept.info.encoding_note


def test_wtsem_values_of_neither_encoding_are_refused(tmp_path):
    bad = ramp(0, 149, (10, 16))
    bad[0, 0] = 200
    make_wtsem(tmp_path, [ramp(0, 149, (10, 16)), bad])
    with pytest.raises(SegDatasetError) as e:
        check_segmentation_data("wtsem", tmp_path)
    msg = _one_line(e)
    assert "f1.png" in msg and "200" in msg and "neither WT-Sem encoding" in msg
    with pytest.raises(SegDatasetError, match="applies to wtsem only"):
        build_segmentation_dataset("bdd100k", tmp_path, "val", encoding="zero_based")
    with pytest.raises(SegDatasetError, match="unknown label encoding"):
        check_segmentation_data("wtsem", tmp_path, encoding="1-based")
