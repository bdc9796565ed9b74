"""Detection data (BDD100K det_20): exact box conversion, COCO ground truth, one-line errors, SynthDrive's boxes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from poodle.data.classes import CLASS_ID
from poodle.data.detection import (
    DET_CLASSES,
    DetectionDataError,
    DetectionDataset,
    check_detection_data,
)
from poodle.data.synthdrive import SynthDriveSequence, generate_dataset
from poodle.data.synthdrive import dataset as ds
from poodle.data.synthdrive.boxes import DET_CATEGORY_OF_TRAIN_ID, MIN_BOX_PIXELS, detection_labels, instance_table
from poodle.data.synthdrive.scenario import _person, _vehicle
from poodle.data.synthdrive.world import CameraPath, Lighting, SceneBuilder

# ------------------------------------------------------------------------------------------ hand-written det_20

FRAMES = [
    {
        "name": "a.jpg",
        "attributes": {"weather": "clear", "scene": "city street", "timeofday": "daytime"},
        "timestamp": 10000,
        "labels": [
            {"id": "1", "category": "person", "attributes": {"occluded": False, "truncated": False},
             "box2d": {"x1": 1, "y1": 2, "x2": 5, "y2": 9}},
            {"id": "2", "category": "car", "attributes": {"occluded": True, "truncated": False, "crowd": True},
             "box2d": {"x1": 10.5, "y1": 4.25, "x2": 30.5, "y2": 20.0}},
            {"id": "3", "category": "other vehicle", "attributes": {"occluded": False, "truncated": True},
             "box2d": {"x1": 0, "y1": 0, "x2": 3, "y2": 3}},
            {"id": "4", "category": "lane/single white", "attributes": {},
             "poly2d": [{"vertices": [[0, 0], [5, 5]], "types": "LL", "closed": False}]},
            {"id": "5", "category": "drivable area", "attributes": {}},
        ],
    },
    {
        "name": "b.png",
        "attributes": {"weather": "rainy", "scene": "highway", "timeofday": "night"},
        "timestamp": 10000,
        "labels": [
            {"id": "7", "category": "traffic light", "attributes": {"trafficLightColor": "red"},
             "box2d": {"x1": 20, "y1": 1, "x2": 22, "y2": 7}},
            {"id": "8", "category": "van", "attributes": {}, "box2d": {"x1": 2, "y1": 3, "x2": 2, "y2": 3}},
        ],
    },
    {"name": "c.jpg", "attributes": {}, "timestamp": 10000},  # no labels at all (the toolkit allows it)
]  # fmt: skip


def write_det(root, frames=FRAMES, split="val", images=True, text=None):
    labels = root / "labels" / "det_20"
    labels.mkdir(parents=True, exist_ok=True)
    (labels / f"det_{split}.json").write_text(json.dumps(frames) if text is None else text)
    image_dir = root / "images" / "100k" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for frame in frames if images else []:
        Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(image_dir / frame["name"])
    return root


def test_exact_boxes_labels_and_flags(tmp_path):
    root = write_det(tmp_path)
    data = DetectionDataset(root, "val")
    assert len(data) == 3 and data.classes == DET_CLASSES
    a, b, c = data[0], data[1], data[2]
    assert a["image"].dtype == torch.uint8 and a["image"].shape == (3, 24, 40)
    assert (a["name"], a["image_id"], b["image_id"], c["image_id"]) == ("a.jpg", 1, 2, 3)
    # Inclusive Scalabel pixels -> exclusive xyxy: x2 + 1, y2 + 1. Lane / drivable-area labels are skipped.
    expected = [[1, 2, 6, 10], [10.5, 4.25, 31.5, 21.0], [0, 0, 4, 4]]
    assert a["boxes"].dtype == torch.float32 and a["boxes"].tolist() == expected
    assert a["labels"].dtype == torch.int64 and a["labels"].tolist() == [1, 3, 3]  # person -> pedestrian
    assert a["iscrowd"].tolist() == [False, True, False]
    assert a["ignore"].tolist() == [False, True, True]  # crowd, and "other vehicle" (ignored, parent car)
    assert b["boxes"].tolist() == [[20, 1, 23, 8], [2, 3, 3, 4]] and b["labels"].tolist() == [9, 3]  # van -> car
    assert b["ignore"].tolist() == [False, False] and b["image"].shape == (3, 24, 40)
    assert c["boxes"].shape == (0, 4) and c["labels"].shape == (0,) and c["ignore"].shape == (0,)
    assert len(DetectionDataset(root, "val", max_images=2)) == 2

    counts = check_detection_data(root, "val")
    assert counts["images"] == 3 and counts["target_boxes"] == 3
    assert counts["boxes"]["pedestrian"] == 1 and counts["boxes"]["car"] == 1 and counts["boxes"]["traffic light"] == 1
    assert (counts["ignored_boxes"], counts["crowd_boxes"], counts["images_without_boxes"]) == (1, 1, 1)
    assert (counts["missing_images"], counts["skipped_labels"], counts["labels_without_box2d"]) == (0, 2, 0)
    assert counts["sizes"] == {"small": 3, "medium": 0, "large": 0}


def test_coco_ground_truth_loads_and_perfect_detections_score_1(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    data = DetectionDataset(write_det(tmp_path), "val")
    gt = data.coco_ground_truth()
    assert [c["id"] for c in gt["categories"]] == list(range(1, 11))
    assert [c["name"] for c in gt["categories"]] == list(DET_CLASSES)
    assert gt["images"][0] == {"id": 1, "file_name": "a.jpg", "height": 24, "width": 40}
    anns = gt["annotations"]
    assert [a["bbox"] for a in anns] == [[1, 2, 5, 8], [10.5, 4.25, 21.0, 16.75], [0, 0, 4, 4], [20, 1, 3, 7],
                                         [2, 3, 1, 1]]  # fmt: skip
    assert [a["area"] for a in anns] == [40.0, 21.0 * 16.75, 16.0, 21.0, 1.0]
    assert [a["iscrowd"] for a in anns] == [0, 1, 1, 0, 0] and [a["ignore"] for a in anns] == [0, 0, 1, 0, 0]
    assert [a["category_id"] for a in anns] == [1, 3, 3, 9, 3] and [a["id"] for a in anns] == [1, 2, 3, 4, 5]

    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    assert len(coco.getImgIds()) == 3 and len(coco.getAnnIds()) == 5
    # The dataset's xyxy boxes, as detections [x1, y1, x2 - x1, y2 - y1], match the ground truth exactly.
    dets = []
    for i in range(len(data)):
        item = data[i]
        for box, label, ignore in zip(item["boxes"].tolist(), item["labels"].tolist(), item["ignore"].tolist()):
            if not ignore:
                x1, y1, x2, y2 = box
                dets.append({"image_id": item["image_id"], "category_id": label, "bbox": [x1, y1, x2 - x1, y2 - y1],
                             "score": 1.0})  # fmt: skip
    ev = COCOeval(coco, coco.loadRes(dets), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)  # AP@[.5:.95]: IoU 1 for every target, the crowd / ignored add nothing


def _frames_with(**change):
    frames = json.loads(json.dumps(FRAMES))
    frames[1]["labels"][0].update(change)
    return frames


@pytest.mark.parametrize(
    "case, expect",
    [
        ("broken_json", ["det_val.json", "not valid JSON"]),
        ("x2_lt_x1", ["det_val.json", "frame 1 ('b.png'), label 0", "x2 < x1"]),
        ("not_numbers", ["det_val.json", "frame 1 ('b.png'), label 0", "finite numbers"]),
        ("unknown_category", ["det_val.json", "frame 1 ('b.png'), label 0", "unknown category 'lorry'"]),
        ("no_name", ["det_val.json", "frame 2", "no 'name'"]),
        ("missing_image", ["det_val.json", "1 of 3 images are missing", "b.png"]),
        ("no_det_labels", ["labels/det_20/det_val.json", "predates detection labels", "poodle synth"]),
        ("wrong_split", ["det_test.json", "has splits val", "no test labels"]),
    ],
)
def test_errors_are_one_line_and_name_the_file(tmp_path, case, expect):
    root, split = tmp_path, "val"
    if case == "broken_json":
        write_det(root, text=json.dumps(FRAMES)[:-20])
    elif case == "x2_lt_x1":
        write_det(root, _frames_with(box2d={"x1": 20, "y1": 1, "x2": 19, "y2": 7}))
    elif case == "not_numbers":
        write_det(root, _frames_with(box2d={"x1": 20, "y1": 1, "x2": "22", "y2": 7}))
    elif case == "unknown_category":
        write_det(root, _frames_with(category="lorry"))
    elif case == "no_name":
        frames = json.loads(json.dumps(FRAMES))
        write_det(root, frames)
        del frames[2]["name"]
        (root / "labels" / "det_20" / "det_val.json").write_text(json.dumps(frames))
    elif case == "missing_image":
        write_det(root)
        (root / "images" / "100k" / "val" / "b.png").unlink()
    elif case == "no_det_labels":  # a SynthDrive dataset made before detection labels existed
        (root / "labels" / "sem_seg" / "masks" / "val").mkdir(parents=True)
        (root / "meta.json").write_text("{}")
    elif case == "wrong_split":
        write_det(root)
        split = "test"
    for call in (lambda: check_detection_data(root, split), lambda: DetectionDataset(root, split)):
        with pytest.raises(DetectionDataError) as e:
            call()
        message = str(e.value)
        assert "\n" not in message, message
        for part in expect:
            assert part in message, message
    if case == "missing_image":
        assert check_detection_data(root, "val", require_images=False)["missing_images"] == 1


# ------------------------------------------------------------------------------------------- SynthDrive boxes


def _road_users_scene():
    """Static camera; a car, a truck half hidden behind it, a pedestrian, a rider on a bicycle, a bus cut by the
    left image border and a traffic sign so far away that it covers fewer than MIN_BOX_PIXELS pixels."""
    cam = CameraPath(
        height=1.4, speed=0.0, speed_wobble=0.0, sway_amp=0.0, bounce_amp=0.0, yaw_amp=0.0, pitch0=0.0, pitch_amp=0.0
    )
    b = SceneBuilder(np.random.default_rng(0), cam, Lighting(fog_max=0.0, cloud_amount=0.0))
    road = b.add_object(CLASS_ID["road"], (110, 110, 110), "asphalt", 24.0)
    b.set_ground([], [road], road)
    b.add_box((-40, 0, 60), (40, 8, 60.5), CLASS_ID["building"], (180, 160, 140), "concrete", 16.0)
    _vehicle(b, "car", -3.0, 12.0, 0.0)  # body + cabin
    _vehicle(b, "truck", -2.0, 22.0, 0.0)
    _person(b, 2.0, 10.0, 0.0, (0.0, 0.0, 0.0), CLASS_ID["person"])  # legs + torso + head
    _vehicle(b, "bicycle", 4.0, 15.0, 2.0)  # the bicycle box, then a rider (torso + head)
    _vehicle(b, "bus", -9.0, 10.0, 0.0)
    b.add_box((2.95, 3.0, 59.0), (3.35, 3.4, 59.1), CLASS_ID["traffic sign"], (200, 200, 40), "sign", 64.0)
    return b.build()


def test_boxes_of_a_constructed_scene():
    seq = SynthDriveSequence(scene=_road_users_scene(), resolution=(96, 192))
    table = instance_table(seq.scene)
    parts = {}
    for inst in np.unique(table[table >= 0]):
        objs = np.flatnonzero(table == inst)
        parts[DET_CATEGORY_OF_TRAIN_ID[int(seq.scene.obj_label[objs[0]])]] = len(objs)
    assert parts == {"car": 2, "truck": 1, "pedestrian": 3, "bicycle": 1, "rider": 2, "bus": 1, "traffic sign": 1}

    labels, tiny = detection_labels(seq, 0)
    found = {lab["category"]: lab for lab in labels}
    assert len(found) == len(labels) == 6 and tiny == 1  # one box per road user; the sign is too small
    seg = seq.labels(0)
    sign_pixels = int((seg == CLASS_ID["traffic sign"]).sum())
    assert 1 <= sign_pixels < MIN_BOX_PIXELS
    for train_id, category in DET_CATEGORY_OF_TRAIN_ID.items():
        if category not in found:
            continue
        ys, xs = np.nonzero(seg == train_id)  # one instance per class here: its pixels are its class's pixels
        box = found[category]["box2d"]
        assert [box["x1"], box["y1"], box["x2"], box["y2"]] == [xs.min(), ys.min(), xs.max(), ys.max()], category
    assert found["truck"]["attributes"]["occluded"] and not found["car"]["attributes"]["occluded"]
    assert not found["pedestrian"]["attributes"]["occluded"] and not found["bus"]["attributes"]["occluded"]
    assert found["bus"]["attributes"]["truncated"] and found["bus"]["box2d"]["x1"] == 0
    assert not any(found[c]["attributes"]["truncated"] for c in ("car", "truck", "pedestrian", "bicycle", "rider"))


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd") / "synthdrive"
    generate_dataset(
        root,
        seed=5,
        train_videos=0,
        val_videos=0,
        train_images=3,
        val_images=2,
        seconds=0.5,
        flow_pairs=0,
        progress=False,
    )
    return root


def test_synthdrive_writes_det20(synth_root):
    root = synth_root
    meta = json.loads((root / "meta.json").read_text())
    for split, n in (("train", 3), ("val", 2)):
        counts = check_detection_data(root, split)
        assert counts["images"] == n and counts["missing_images"] == 0 and counts["ignored_boxes"] == 0
        assert counts["target_boxes"] == meta["detection"]["splits"][split]["boxes"] > 0
        assert counts["boxes"] == meta["detection"]["splits"][split]["per_class"]
        frames = json.loads((root / "labels" / "det_20" / f"det_{split}.json").read_text())
        for frame in frames:
            assert set(frame) == {"name", "attributes", "timestamp", "labels"}
            stem = frame["name"][: -len(".jpg")]
            seg_image, det_image = root / "images" / "10k" / split / frame["name"], root / "images" / "100k" / split
            assert os.path.samefile(seg_image, det_image / frame["name"]) or (
                seg_image.read_bytes() == (det_image / frame["name"]).read_bytes()
            )
            assert (root / "labels" / "sem_seg" / "masks" / split / f"{stem}.png").is_file()
            for label in frame["labels"]:
                assert set(label) == {"id", "category", "attributes", "box2d"}
                assert set(label["attributes"]) == {"occluded", "truncated"}
        data = DetectionDataset(root, split)
        item = data[0]
        assert item["image"].shape == (3, 128, 256) and len(data) == n
        first = frames[0]["labels"]
        assert item["boxes"].tolist() == [
            [b["box2d"]["x1"], b["box2d"]["y1"], b["box2d"]["x2"] + 1, b["box2d"]["y2"] + 1] for b in first
        ]
    stats = (root / "stats.md").read_text()
    assert stats.count("| Size Grp. |") == 1 and "## Detection boxes" in stats


def test_synthdrive_boxes_enclose_exactly_the_visible_pixels(synth_root):
    """Known answer: recompute image 0's instances from the exact object ids and compare with det_train.json."""
    meta = json.loads((synth_root / "meta.json").read_text())
    index, t = ds.labelled_image_source(5, "train", 0, round(meta["settings"]["seconds"] * meta["fps"]))
    seq = SynthDriveSequence(seed=5, index=index, resolution=tuple(meta["resolution"]), fps=meta["fps"])
    oid = seq.object_ids(t)
    scene = seq.scene
    table = instance_table(scene)
    inst = table[oid]
    frame = json.loads((synth_root / "labels" / "det_20" / "det_train.json").read_text())[0]
    assert frame["name"] == f"{ds.sequence_name(5, 'image', 'train', 0)}.jpg"
    written = {int(lab["id"]): lab for lab in frame["labels"]}

    # Every pixel of a detection class belongs to an instance, and nothing else does.
    det_pixels = np.isin(seq.labels(t), list(DET_CATEGORY_OF_TRAIN_ID))
    np.testing.assert_array_equal(inst >= 0, det_pixels)
    expected = {}
    for k in np.unique(inst[inst >= 0]):
        objs = np.flatnonzero(table == k)
        # An instance is a run of consecutive objects of one label (a person's legs, torso, head; a car's body, cabin).
        assert np.all(np.diff(objs) == 1) and len(set(scene.obj_label[objs].tolist())) == 1
        ys, xs = np.nonzero(np.isin(oid, objs))
        if len(ys) >= MIN_BOX_PIXELS:
            category = DET_CATEGORY_OF_TRAIN_ID[int(scene.obj_label[objs[0]])]
            expected[int(k)] = (category, [xs.min(), ys.min(), xs.max(), ys.max()])
    assert len(expected) >= 3
    assert set(written) == set(expected)
    for k, (category, box) in expected.items():
        b = written[k]["box2d"]
        assert written[k]["category"] == category and [b["x1"], b["y1"], b["x2"], b["y2"]] == box
        h, w = oid.shape
        touches = box[0] == 0 or box[1] == 0 or box[2] == w - 1 or box[3] == h - 1
        assert written[k]["attributes"]["truncated"] == touches


def test_learnable_images_need_no_image_files(tmp_path, monkeypatch):
    # a.jpg: a person (plus crowd and ignored boxes); b.png: a traffic light; c.jpg: no labels; d.jpg: crowd only.
    crowd_only = {"name": "d.jpg", "labels": [FRAMES[0]["labels"][1]]}
    data = DetectionDataset(write_det(tmp_path, frames=[*FRAMES, crowd_only], split="train"), "train")

    def no_image(*args, **kwargs):
        raise AssertionError("an image was opened")

    monkeypatch.setattr(Image, "open", no_image)
    assert data.learnable_images() == [0, 1]  # 70K BDD100K frames must not mean 70K image reads
