"""poodle.data.pairs and poodle.data.outer_crop: sampling rules, crops, retries, layouts, collation."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from poodle.config import DataConfig
from poodle.data.manifest import DatasetLayoutError
from poodle.data.outer_crop import OuterCrop, apply_outer_crop, resized_size, sample_outer_crop
from poodle.data.pairs import FramePairDataset, PairDataError, build_pair_dataset, collate_pairs
from poodle.data.video import probe_video, read_frames
from video_fixtures import decode_index, write_video

FULL_FRAME = {"resolution": (64, 96), "canvas": (64, 96), "scale": (1.0, 1.0)}  # identity crop: codes stay readable


@pytest.fixture(scope="module")
def vids(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pairs")
    return {
        "a": write_video(d / "a.mp4", 120),
        "b": write_video(d / "b.mov", 90),
        "fps60": write_video(d / "fps60.mp4", 120, fps=60),
        "static": write_video(d / "static.mp4", 60, static=True),
        "long": write_video(d / "long.mp4", 700, gop=30),
    }


def code(frame: torch.Tensor) -> int:
    return decode_index(frame.permute(1, 2, 0).numpy())


def pairs_of(sample: dict) -> list[dict]:
    """Split one dataset sample (R stacked pairs) into R per-pair dicts."""
    r = len(sample["meta"])
    assert sample["frame_a"].shape[0] == sample["frame_b"].shape[0] == r
    return [
        {"frame_a": sample["frame_a"][i], "frame_b": sample["frame_b"][i], "meta": sample["meta"][i]} for i in range(r)
    ]


def test_pairs_decode_the_sampled_frames_and_respect_dt(vids):
    ds = FramePairDataset([probe_video(vids["a"]), probe_video(vids["b"])], dt_frames=(15, 30), repeat=3, **FULL_FRAME)
    assert len(ds) == 2
    seen_dt = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        for item in range(len(ds)):
            pairs = pairs_of(ds[item])
            assert len(pairs) == 3  # repeated sampling: R pairs per load, each with its own start and gap
            for p in pairs:
                m = p["meta"]
                assert p["frame_a"].shape == (3, 64, 96) and p["frame_a"].dtype == torch.uint8
                assert m.video_index == item and 15 <= m.dt <= 30
                assert 0 <= m.t_a and m.t_b < ds.videos[item].frame_count
                assert (code(p["frame_a"]), code(p["frame_b"])) == (m.t_a, m.t_b)
                seen_dt.add(m.dt)
    assert len(seen_dt) > 8  # uniform over the inclusive range, not a constant


def test_dt_seconds_uses_each_videos_fps(vids):
    ds = FramePairDataset([probe_video(vids["fps60"]), probe_video(vids["a"])], dt_seconds=0.5, repeat=4, **FULL_FRAME)
    assert ds.dt_range(ds.videos[0]) == (30, 30) and ds.dt_range(ds.videos[1]) == (15, 15)
    assert {p["meta"].dt for p in pairs_of(ds[0])} == {30}
    assert {p["meta"].dt for p in pairs_of(ds[1])} == {15}
    assert all(code(p["frame_b"]) == p["meta"].t_b for p in pairs_of(ds[0]))


def test_same_crop_box_on_both_frames(vids):
    # Every frame of the static video is the same picture: with one shared box the two crops match.
    info = probe_video(vids["static"])
    ds = FramePairDataset([info], resolution=(32, 48), canvas=(64, 96), scale=(0.75, 1.25), repeat=4)
    source = read_frames(vids["static"], [0], info)[0]
    for epoch in range(3):
        ds.set_epoch(epoch)
        for p in pairs_of(ds[0]):
            a, b = p["frame_a"].int(), p["frame_b"].int()
            assert (a - b).abs().float().mean() < 1.5
            crop = p["meta"].crop
            top, left, h, w = crop.box
            moved = OuterCrop(crop.scale, crop.source_hw, crop.resized_hw, ((top + 8) % 17, (left + 13) % 29, h, w))
            shifted = torch.from_numpy(apply_outer_crop(source, moved)).permute(2, 0, 1).int()
            assert (a - shifted).abs().float().mean() > 5  # a different box would be visible
    # The output is exactly the recorded crop of the decoded frames.
    ds2 = FramePairDataset([probe_video(vids["a"])], resolution=(40, 72), canvas=(64, 96), scale=(0.9, 1.3), repeat=2)
    for p in pairs_of(ds2[0]):
        m = p["meta"]
        fa, fb = read_frames(vids["a"], [m.t_a, m.t_b])
        np.testing.assert_array_equal(p["frame_a"].permute(1, 2, 0).numpy(), apply_outer_crop(fa, m.crop))
        np.testing.assert_array_equal(p["frame_b"].permute(1, 2, 0).numpy(), apply_outer_crop(fb, m.crop))


def test_determinism_per_seed_and_epoch(vids):
    infos = [probe_video(vids["a"]), probe_video(vids["b"])]
    kw = {"resolution": (32, 48), "canvas": (64, 96), "scale": (0.75, 1.25), "repeat": 2}

    def draw(seed: int, epoch: int) -> list:
        ds = FramePairDataset(infos, seed=seed, **kw)
        ds.set_epoch(epoch)
        return [(p["meta"].t_a, p["meta"].t_b, p["meta"].crop, p["frame_a"]) for i in range(2) for p in pairs_of(ds[i])]

    first, again = draw(0, 1), draw(0, 1)
    assert [x[:3] for x in first] == [x[:3] for x in again]
    assert all(torch.equal(x[3], y[3]) for x, y in zip(first, again, strict=True))
    assert [x[:3] for x in draw(0, 2)] != [x[:3] for x in first]
    assert [x[:3] for x in draw(1, 1)] != [x[:3] for x in first]


def test_sample_keys_past_the_length_are_later_passes(vids):
    # The engine's StepBatchSampler passes keys = pass * len + item: same video, fresh pairs.
    ds = FramePairDataset([probe_video(vids["a"]), probe_video(vids["b"])], repeat=2, **FULL_FRAME)
    first, later = ds[1], ds[2 * len(ds) + 1]
    assert {m.video_index for m in first["meta"] + later["meta"]} == {1}
    assert [(m.t_a, m.t_b) for m in first["meta"]] != [(m.t_a, m.t_b) for m in later["meta"]]
    assert [(m.t_a, m.t_b) for m in ds[1]["meta"]] == [(m.t_a, m.t_b) for m in first["meta"]]
    with pytest.raises(IndexError):
        ds[-1]


def test_collate_flattens_repeats_and_works_in_a_dataloader(vids):
    ds = FramePairDataset([probe_video(vids["a"]), probe_video(vids["b"])], repeat=3, **FULL_FRAME)
    batch = collate_pairs([ds[0], ds[1]])
    assert batch["frame_a"].shape == (6, 3, 64, 96) and batch["frame_b"].dtype == torch.uint8
    assert [m.video_index for m in batch["meta"]] == [0, 0, 0, 1, 1, 1]
    loader = DataLoader(ds, batch_size=2, num_workers=1, collate_fn=collate_pairs)
    (from_worker,) = list(loader)
    assert torch.equal(from_worker["frame_a"], batch["frame_a"])  # same samples in a worker: no worker-id seeding


def test_wt_clips_keep_both_frames_inside_one_clip(vids, tmp_path):
    root = tmp_path / "wt"
    (root / "videos").mkdir(parents=True)
    shutil.copy(vids["long"], root / "videos" / "venice.mp4")  # 700 frames at 30 fps: clips of 300, 300, 100
    cfg = DataConfig(dataset="wt", root=str(root), dt_seconds=0.5, repeat=2, **FULL_FRAME)
    ds = build_pair_dataset(cfg, progress=False)
    assert len(ds) == 3
    for epoch in range(10):
        ds.set_epoch(epoch)
        for item in range(3):
            for p in pairs_of(ds[item]):
                m = p["meta"]
                assert m.dt == 15 and m.t_a // 300 == m.t_b // 300 == item
    assert (code(p["frame_a"]), code(p["frame_b"])) == (m.t_a, m.t_b)
    # Videos directly in ROOT work too.
    flat = tmp_path / "wt_flat"
    flat.mkdir()
    shutil.copy(vids["long"], flat / "zurich.mkv")
    assert len(build_pair_dataset(DataConfig(dataset="wt", root=str(flat), **FULL_FRAME), progress=False)) == 3


@pytest.mark.parametrize("dataset", ["bdd100k", "synthdrive"])
def test_bdd_layout(vids, tmp_path, dataset):
    root = tmp_path / dataset
    for split, names in (("train", ["x1", "x2"]), ("val", ["y1"])):
        (root / "videos" / split).mkdir(parents=True)
        for name in names:
            shutil.copy(vids["b"], root / "videos" / split / f"{name}.mov")
    train = build_pair_dataset(DataConfig(dataset=dataset, root=str(root), **FULL_FRAME), progress=False)
    assert sorted(Path(v.path).stem for v in train.videos) == ["x1", "x2"]
    val = build_pair_dataset(DataConfig(dataset=dataset, root=str(root), split="val", **FULL_FRAME), progress=False)
    assert [Path(v.path).stem for v in val.videos] == ["y1"]
    with pytest.raises(DatasetLayoutError, match=r"videos/test.*Expected layout: ROOT/videos/test/<name>\.mov"):
        build_pair_dataset(DataConfig(dataset=dataset, root=str(root), split="test"), progress=False)


def test_folder_layout_nested_mixed_extensions(vids, tmp_path):
    root = tmp_path / "mine"
    (root / "trip1" / "day2").mkdir(parents=True)
    shutil.copy(vids["a"], root / "trip1" / "a.mp4")
    shutil.copy(vids["b"], root / "trip1" / "day2" / "b.mov")
    write_video(root / "c.avi", 40, codec="mpeg4")
    write_video(root / "d.webm", 40, codec="libvpx-vp9")
    ds = build_pair_dataset(DataConfig(dataset="folder", root=str(root), repeat=1, **FULL_FRAME), progress=False)
    assert sorted(Path(v.path).name for v in ds.videos) == ["a.mp4", "b.mov", "c.avi", "d.webm"]
    for item in range(len(ds)):
        (p,) = pairs_of(ds[item])
        assert (code(p["frame_a"]), code(p["frame_b"])) == (p["meta"].t_a, p["meta"].t_b)
    with pytest.raises(DatasetLayoutError, match="Expected layout"):
        build_pair_dataset(DataConfig(dataset="folder", root=str(tmp_path / "none")), progress=False)


def test_corrupt_files_cost_one_sample_never_the_run(vids, tmp_path, caplog):
    root = tmp_path / "mixed"
    root.mkdir()
    for name in ("good.mp4", "later_bad.mp4"):
        shutil.copy(vids["a"], root / name)
    (root / "garbage.mp4").write_bytes(np.random.default_rng(1).bytes(5000))
    cut = root / "half.mov"
    cut.write_bytes(vids["b"].read_bytes()[: vids["b"].stat().st_size // 2])
    ds = build_pair_dataset(DataConfig(dataset="folder", root=str(root), repeat=2, **FULL_FRAME), progress=False)
    assert sorted(Path(v.path).name for v in ds.videos) == ["good.mp4", "later_bad.mp4"]  # the scan skipped two
    # The file goes bad after the scan: the dataset falls back to another video and remembers the path.
    (root / "later_bad.mp4").write_bytes(b"\0" * 1000)
    bad = [Path(v.path).name for v in ds.videos].index("later_bad.mp4")
    with caplog.at_level(logging.WARNING, logger="poodle.data"):
        for epoch in range(3):
            ds.set_epoch(epoch)
            pairs = pairs_of(ds[bad])
            assert len(pairs) == 2 and all(Path(p["meta"].path).name == "good.mp4" for p in pairs)
            assert all(p["meta"].item == bad for p in pairs)
    assert list(ds.failures) == [str(root / "later_bad.mp4")]
    assert caplog.text.count("using a random other one") == 1  # one warning per bad file
    # When every video is bad the error lists them.
    (root / "good.mp4").write_bytes(b"\0" * 1000)
    ds2 = FramePairDataset(ds.videos, max_retries=3, **FULL_FRAME)
    with pytest.raises(PairDataError, match=r"good\.mp4.*later_bad\.mp4|later_bad\.mp4.*good\.mp4"):
        ds2[0]


# --------------------------------------------------------------------------------------------- outer crop math


def test_outer_crop_sizes_follow_the_spec():
    rng = np.random.default_rng(0)
    # BDD: 720p source, canvas 1080x1920, s ~ U[0.75, 1.25]: resize to (floor(1080 s), floor(1920 s)).
    assert resized_size((720, 1280), (1080, 1920), 1.0, (512, 1024)) == (1080, 1920)
    assert resized_size((720, 1280), (1080, 1920), 0.75, (512, 1024)) == (810, 1440)
    areas = [
        sample_outer_crop(rng, (720, 1280), (512, 1024), (1080, 1920), (0.75, 1.25)).area_fraction() for _ in range(300)
    ]
    assert 0.161 <= min(areas) and max(areas) <= 0.450  # spec 3.3: [0.162, 0.449]
    # WT: s ~ U[0.535, 0.625] on a 4K source: area in [0.647, 0.883].
    areas = [
        sample_outer_crop(rng, (2160, 3840), (512, 1024), (1080, 1920), (0.535, 0.625)).area_fraction()
        for _ in range(300)
    ]
    assert 0.645 <= min(areas) and max(areas) <= 0.885
    # Other shapes keep their aspect ratio and get the canvas's area (a portrait 720p frame: 1920 x 1080) ...
    assert resized_size((1280, 720), (1080, 1920), 1.0, (512, 1024)) == (1920, 1080)
    assert resized_size((360, 640), (1080, 1920), 1.0, (512, 1024)) == (1080, 1920)  # small sources upsampled
    # ... and are enlarged further only when the crop would not fit (a 4:1 portrait frame).
    assert resized_size((2000, 500), (1080, 1920), 1.0, (512, 1024)) == (4096, 1024)


def test_outer_crop_equals_resize_then_crop():
    rng = np.random.default_rng(3)
    img = cv2.GaussianBlur((rng.random((90, 160, 3)) * 255).astype(np.uint8), (9, 9), 3)
    identity = OuterCrop(1.0, (90, 160), (90, 160), (0, 0, 90, 160))
    np.testing.assert_array_equal(apply_outer_crop(img, identity), img)
    for _ in range(5):  # upsampling: bilinear with OpenCV's pixel centres
        crop = sample_outer_crop(rng, (90, 160), (64, 128), (180, 320), (0.75, 1.25))
        (top, left, h, w), (hr, wr) = crop.box, crop.resized_hw
        ref = cv2.resize(img, (wr, hr), interpolation=cv2.INTER_LINEAR)[top : top + h, left : left + w]
        assert np.abs(apply_outer_crop(img, crop).astype(int) - ref).max() <= 1
    big = cv2.resize(img, (640, 360), interpolation=cv2.INTER_CUBIC)
    for _ in range(5):  # heavy downsampling (box prefilter): close to an area resize
        crop = sample_outer_crop(rng, (360, 640), (32, 64), (90, 160), (0.75, 1.25))
        (top, left, h, w), (hr, wr) = crop.box, crop.resized_hw
        ref = cv2.resize(big, (wr, hr), interpolation=cv2.INTER_AREA)[top : top + h, left : left + w]
        assert np.abs(apply_outer_crop(big, crop).astype(float) - ref).mean() < 3


def test_start_range_release_and_full():
    from poodle.data.pairs import draw_start

    rng = np.random.default_rng(0)
    # The release: randint(0, len - 30) whatever dt is, so starts in [len - 30, len - dt) are never drawn.
    release = {draw_start(rng, 100, 15, 30, "release") for _ in range(4000)}
    full = {draw_start(rng, 100, 15, 30, "full") for _ in range(4000)}
    assert release == set(range(0, 70)) and full == set(range(0, 85))
    # A fixed gap (WT): both rules agree; an item shorter than dt_max clamps to the last fitting start.
    assert {draw_start(rng, 40, 15, 15, "release") for _ in range(2000)} == set(range(25))
    assert {draw_start(rng, 20, 15, 30, "release") for _ in range(200)} == set(range(5))
    with pytest.raises(ValueError, match="start range"):
        draw_start(rng, 100, 15, 30, "middle")


def test_bdd100k_palette_matches_the_toolkit():
    from poodle.data.classes import BDD100K_CLASSES, BDD100K_PALETTE

    colours = dict(zip(BDD100K_CLASSES, BDD100K_PALETTE))
    assert colours["wall"] == (102, 102, 156) and colours["fence"] == (190, 153, 153)  # bdd100k label.py, mmseg
