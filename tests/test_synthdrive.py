"""SynthDrive: determinism, exact flow / occlusion ground truth, on-disk layout, output safety, statistics."""

from __future__ import annotations

import json
from dataclasses import replace

import cv2
import numpy as np
import pytest
from PIL import Image

from poodle.data.classes import CLASS_ID, IGNORE_INDEX
from poodle.data.synthdrive import PRESETS, SynthDriveError, SynthDriveSequence, generate_dataset, read_flo
from poodle.data.synthdrive import dataset as ds
from poodle.data.synthdrive.scenario import build_scene
from poodle.data.synthdrive.world import CameraPath, Lighting, SceneBuilder

RES = (96, 192)


def backward_warp(image: np.ndarray, flow: np.ndarray, interpolation=cv2.INTER_LINEAR) -> np.ndarray:
    """Sample `image` (frame t2) at (x + dx, y + dy): integer coordinates are pixel centres, as in cv2.remap."""
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(image, gx + flow[..., 0], gy + flow[..., 1], interpolation, borderMode=cv2.BORDER_REPLICATE)


def warp_errors(seq: SynthDriveSequence, t: int, t2: int, mask=None) -> tuple[float, float]:
    """Mean abs error of the GT-flow warp and of zero flow, on non-occluded pixels (within `mask`)."""
    f1, f2 = seq.frame(t).astype(np.float32), seq.frame(t2).astype(np.float32)
    valid = ~seq.occlusion(t, t2) if mask is None else ~seq.occlusion(t, t2) & mask
    assert valid.sum() > 50
    warped = backward_warp(f2, seq.flow(t, t2))
    return float(np.abs(warped - f1)[valid].mean()), float(np.abs(f2 - f1)[valid].mean())


def test_api_shapes_and_dtypes():
    seq = SynthDriveSequence(seed=0, index=3, resolution=(64, 128), fps=30)
    assert seq.frame(0).shape == (64, 128, 3) and seq.frame(0).dtype == np.uint8
    lab = seq.labels(0)
    assert lab.shape == (64, 128) and lab.dtype == np.uint8
    assert set(np.unique(lab)) <= set(range(19)) | {IGNORE_INDEX}
    assert seq.flow(0, 5).shape == (64, 128, 2) and seq.flow(0, 5).dtype == np.float32
    assert seq.occlusion(0, 5).dtype == bool
    depth = seq.depth(0)
    assert depth.dtype == np.float32
    assert np.isinf(depth[lab == CLASS_ID["sky"]]).all() and np.isfinite(depth[lab != CLASS_ID["sky"]]).all()
    assert np.abs(seq.flow(4, 4)).max() < 1e-4 and not seq.occlusion(4, 4).any()


def test_deterministic_per_seed_and_index():
    a, b = SynthDriveSequence(seed=1, index=2, resolution=RES), SynthDriveSequence(seed=1, index=2, resolution=RES)
    np.testing.assert_array_equal(a.frame(7), b.frame(7))
    np.testing.assert_array_equal(a.labels(7), b.labels(7))
    np.testing.assert_array_equal(a.flow(7, 20), b.flow(7, 20))
    np.testing.assert_array_equal(a.occlusion(7, 20), b.occlusion(7, 20))
    assert not np.array_equal(a.frame(7), SynthDriveSequence(seed=2, index=2, resolution=RES).frame(7))
    assert not np.array_equal(a.frame(7), SynthDriveSequence(seed=1, index=3, resolution=RES).frame(7))


def test_scene_does_not_depend_on_resolution():
    lo = SynthDriveSequence(seed=0, index=5, resolution=(64, 128)).labels(10)
    hi = SynthDriveSequence(seed=0, index=5, resolution=(128, 256)).labels(10)
    assert (hi[::2, ::2] == lo).mean() > 0.9  # same world, just sampled more finely


def _moving_scene(index: int, agents: bool):
    scene = build_scene(0, index, agents=agents)
    # A moving camera with clear weather (haze changes with distance, which breaks brightness constancy).
    scene.camera = replace(scene.camera, speed=max(scene.camera.speed, 9.0))
    scene.lighting = replace(Lighting(), gain=scene.lighting.gain)
    return scene


def test_flow_ego_motion_only():
    seq = SynthDriveSequence(scene=_moving_scene(4, agents=False), resolution=RES)
    for t, t2 in ((10, 16), (10, 25)):
        err, zero = warp_errors(seq, t, t2)
        assert err < zero / 4, (t, t2, err, zero)
        assert seq.occlusion(t, t2).mean() < 0.9


@pytest.mark.parametrize("index", [2, 5])
def test_flow_on_moving_agents(index):
    res = (128, 256)
    seq = SynthDriveSequence(scene=_moving_scene(index, agents=True), resolution=res)
    t, t2 = 10, 18
    lab, ids = seq.labels(t), seq.object_ids(t)
    # Interior pixels of car parts: at a boundary (also body | windows), bilinear sampling mixes in the
    # neighbour, which is a resampling error, not a flow error.
    interior = cv2.dilate(ids.astype(np.float32), np.ones((3, 3))) == cv2.erode(ids.astype(np.float32), np.ones((3, 3)))
    cars = interior & (lab == CLASS_ID["car"])
    assert cars.sum() > 100
    speed = seq.scene.obj_velocity[ids]
    moving = cars & (np.abs(speed[..., 2]) > 1.0)
    assert moving.sum() > 30  # some car pixels are on moving cars
    err, zero = warp_errors(seq, t, t2, mask=moving)
    assert err < zero / 4, (err, zero)
    err_all, zero_all = warp_errors(seq, t, t2)
    assert err_all < zero_all / 4
    # Labels follow the flow: nearest-neighbour warp agrees on non-occluded pixels.
    valid = ~seq.occlusion(t, t2)
    warped = backward_warp(seq.labels(t2), seq.flow(t, t2), cv2.INTER_NEAREST)
    assert (warped[valid] == lab[valid]).mean() > 0.97


def _wall_and_car_scene(vx: float = 3.0):
    """Static camera looking at a wall 20 m ahead; a car 12 m ahead drives sideways in front of it."""
    cam = CameraPath(
        height=1.4, speed=0.0, speed_wobble=0.0, sway_amp=0.0, bounce_amp=0.0, yaw_amp=0.0, pitch0=0.0, pitch_amp=0.0
    )
    b = SceneBuilder(np.random.default_rng(0), cam, Lighting(fog_max=0.0, cloud_amount=0.0))
    road = b.add_object(CLASS_ID["road"], (110, 110, 110), "asphalt", 24.0)
    b.set_ground([], [road], road)
    b.add_box((-30, 0, 20), (30, 6, 20.5), CLASS_ID["wall"], (180, 160, 140), "concrete", 16.0)
    b.add_box((-4.0, 0.1, 10.0), (-2.2, 1.5, 14.0), CLASS_ID["car"], (160, 30, 30), "paint", 32.0, (vx, 0.0, 0.0))
    return b.build()


def test_occlusion_exact_on_constructed_case():
    seq = SynthDriveSequence(scene=_wall_and_car_scene(), resolution=RES, fps=30)
    t, t2 = 0, 10  # the car moves 1 m to the right
    lab, lab2 = seq.labels(t), seq.labels(t2)
    car, car2 = lab == CLASS_ID["car"], lab2 == CLASS_ID["car"]
    occ = seq.occlusion(t, t2)
    flow = seq.flow(t, t2)
    assert car.sum() > 100 and not (car == car2).all()
    # Static camera: the static world does not move, the car moves right only.
    assert np.abs(flow[~car]).max() < 1e-3
    assert (flow[car][:, 0] > 1.0).all() and np.abs(flow[car][:, 1]).max() < 1e-3
    # Occluded = static pixels (wall, road) that the car covers at t2; the car itself stays visible.
    expected = ~car & car2
    assert expected.sum() > 20
    assert not occ[car].any()
    np.testing.assert_array_equal(occ, expected)
    # Warping reproduces the frame exactly where the car's surface is seen at both times.
    err, zero = warp_errors(seq, t, t2, mask=car)
    assert err < zero / 4


def test_out_of_view_points_are_occluded():
    scene = _wall_and_car_scene(vx=60.0)  # 20 m to the right in 1/3 s: leaves the image
    seq = SynthDriveSequence(scene=scene, resolution=RES, fps=30)
    car = seq.labels(0) == CLASS_ID["car"]
    assert seq.occlusion(0, 10)[car].all()


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    from poodle.cli import main

    out = tmp_path_factory.mktemp("sd") / "synthdrive"
    argv = [
        "synth",
        str(out),
        "--resolution",
        "64x128",
        "--videos",
        "2",
        "--val-videos",
        "1",
        "--images",
        "8",
        "--val-images",
        "4",
        "--seconds",
        "1",
        "--flow-pairs",
        "1",
        "--seed",
        "3",
        "--preview",
        "--no-progress",
    ]
    assert main(argv) == 0
    return out


def test_dataset_layout(tiny_dataset):
    root = tiny_dataset
    meta = json.loads((root / "meta.json").read_text())
    for key in (
        "seed",
        "preset",
        "resolution",
        "fps",
        "counts",
        "class_stats",
        "generator_version",
        "frames_per_second",
    ):
        assert key in meta
    assert meta["resolution"] == [64, 128] and meta["seed"] == 3
    assert meta["counts"]["videos"] == {"train": 2, "val": 1}
    assert meta["counts"]["images"] == {"train": 8, "val": 4}
    assert meta["counts"]["frames_per_video"] == 30
    assert len(list((root / "videos" / "train").glob("*.mov"))) == 2
    assert len(list((root / "videos" / "val").glob("*.mov"))) == 1
    for split, n in (("train", 8), ("val", 4)):
        images = sorted((root / "images" / "10k" / split).glob("*.jpg"))
        assert len(images) == n
        for img in images:
            mask = Image.open(root / "labels" / "sem_seg" / "masks" / split / f"{img.stem}.png")
            assert mask.mode == "L" and mask.size == (128, 64)
            assert set(np.unique(np.asarray(mask))) <= set(range(19)) | {255}
            assert Image.open(img).size == (128, 64)
            assert (root / "labels" / "sem_seg" / "colormaps" / split / f"{img.stem}.png").is_file()
    videos = {p.stem for p in (root / "videos" / "train").glob("*.mov")}
    assert not videos & {p.stem for p in (root / "images" / "10k" / "train").glob("*.jpg")}
    pairs = json.loads((root / "flow" / "train.json").read_text())
    assert len(pairs) == 2
    for pair in pairs:
        assert pair["video"] in videos and 15 <= pair["t2"] - pair["t"] <= 29
        flow = read_flo(root / pair["flow"])
        assert flow.shape == (64, 128, 2) and np.isfinite(flow).all()
        occ = np.asarray(Image.open(root / pair["occlusion"]))
        assert occ.dtype == np.uint8 and set(np.unique(occ)) <= {0, 255}
    assert (root / "stats.md").read_text().count("| Size Grp. |") == 1
    assert (root / "preview.png").is_file()
    assert not list(root.parent.glob("*.partial-*"))


def test_videos_and_flow_match_the_sequence(tiny_dataset):
    import av

    root = tiny_dataset
    seq = SynthDriveSequence(seed=3, index=ds.INDEX_BASE[("video", "train")] + 0, resolution=(64, 128))
    name = ds.sequence_name(3, "video", "train", 0)
    with av.open(str(root / "videos" / "train" / f"{name}.mov")) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 30
    for t in (0, 15, 29):
        diff = np.abs(decoded[t].astype(np.float32) - seq.frame(t).astype(np.float32)).mean()
        assert diff < 6.0, (t, diff)
    pair = next(p for p in json.loads((root / "flow" / "train.json").read_text()) if p["video"] == name)
    np.testing.assert_allclose(read_flo(root / pair["flow"]), seq.flow(pair["t"], pair["t2"]), atol=1e-4)


def test_refuses_non_empty_output(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "something.txt").write_text("mine")
    with pytest.raises(SynthDriveError, match="not empty"):
        generate_dataset(out, progress=False)
    # Even with overwrite, a folder that is not a SynthDrive dataset is never deleted.
    with pytest.raises(SynthDriveError, match="refusing to delete .*not made by poodle.*something.txt"):
        generate_dataset(out, overwrite=True, progress=False)
    assert (out / "something.txt").read_text() == "mine"


def test_overwrite_replaces_a_dataset(tmp_path):
    out = tmp_path / "out"
    small = {
        "resolution": (64, 64),
        "train_videos": 1,
        "val_videos": 0,
        "train_images": 1,
        "val_images": 0,
        "seconds": 0.5,
        "flow_pairs": 0,
        "progress": False,
    }
    generate_dataset(out, seed=1, **small)
    meta = generate_dataset(out, seed=2, overwrite=True, **small)
    assert meta["seed"] == 2 and json.loads((out / "meta.json").read_text())["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("resolution", [(60, 128), (64, 4096), (0, 64)])
def test_bad_resolution_names_the_range(resolution, tmp_path):
    with pytest.raises(SynthDriveError, match=r"multiple of 8 in \[64, 2048\]"):
        generate_dataset(tmp_path / "x", resolution=resolution, progress=False)
    assert not (tmp_path / "x").exists()


def test_cli_errors_are_one_line(tmp_path, capsys):
    from poodle.cli import main

    assert main(["synth", str(tmp_path / "x"), "--resolution", "60x100"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "[64, 2048]" in err
    assert main(["synth", str(tmp_path / "x"), "--images", "0"]) == 2
    assert "train images must be an integer in [1, 100000]" in capsys.readouterr().err


def test_no_half_written_dataset_on_error(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ds, "_write_image", boom)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="disk full"):
        generate_dataset(
            out,
            resolution=(64, 64),
            train_videos=1,
            val_videos=0,
            train_images=2,
            val_images=0,
            seconds=0.5,
            flow_pairs=0,
            progress=False,
        )
    assert list(tmp_path.iterdir()) == []


def test_small_preset_class_statistics():
    """The small preset's train labels are imbalanced like BDD100K (spec 6.6)."""
    from poodle.data.class_stats import class_statistics
    from poodle.data.classes import BDD100K_CLASSES

    p = PRESETS["small"]
    labels = []
    for i in range(p.train_images):
        index, t = ds.labelled_image_source(0, "train", i, p.frames_per_video)
        labels.append(SynthDriveSequence(seed=0, index=index, resolution=p.resolution, fps=p.fps).labels(t))
    stats = class_statistics(labels, BDD100K_CLASSES)
    assert len(stats.group(size="S")) >= 5, stats.to_markdown()
    assert len(stats.group(frequency="R")) >= 4, stats.to_markdown()
    top4 = {r.name for r in sorted(stats.rows, key=lambda r: -r.total_pixel_pct)[:4]}
    assert top4 == {"road", "sky", "building", "vegetation"}, stats.to_markdown()
