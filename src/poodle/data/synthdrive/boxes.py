"""Detection boxes from SynthDrive's exact object ids, in BDD100K's det_20 (Scalabel) label format.

An *object* of a `Scene` is one box primitive, so one road user is several objects: a person is legs + torso + head,
a rider torso + head, a car body + glass cabin (docs/synthdrive.md). `instance_table` groups them back into
instances: objects are added part after part, so two objects belong to the same instance when their ids are
consecutive, they have the same detection label and the same velocity, and their 3D boxes touch (the parts of a
person or car are stacked face to face). Separate road users of one class do not touch: in a lane they are at least
2.5 m apart, parked cars 0.5 m, and the head of one person (above 0.85 x 1.5 m) never reaches the legs of the next one
(below 0.47 x 1.9 m). Boxes that do overlap in 3D (two parked trucks, two lamps on one arm) become one instance.

One box per instance with at least `MIN_BOX_PIXELS` visible pixels, enclosing exactly its visible pixels, in
Scalabel's inclusive pixel convention (x2, y2 are the last column / row covered, as scalabel's `mask_to_box2d`).

    labels, n_tiny = detection_labels(seq, t)      # [{"id", "category", "attributes", "box2d"}, ...]
"""

from __future__ import annotations

import numpy as np

from poodle.data.classes import CLASS_ID
from poodle.data.synthdrive.world import SKY_OID, Scene

# BDD100K segmentation trainId -> det_20 category (the 10 detection classes; "person" is "pedestrian" there).
DET_CATEGORY_OF_TRAIN_ID: dict[int, str] = {
    CLASS_ID["person"]: "pedestrian",
    CLASS_ID["rider"]: "rider",
    CLASS_ID["car"]: "car",
    CLASS_ID["truck"]: "truck",
    CLASS_ID["bus"]: "bus",
    CLASS_ID["train"]: "train",
    CLASS_ID["motorcycle"]: "motorcycle",
    CLASS_ID["bicycle"]: "bicycle",
    CLASS_ID["traffic light"]: "traffic light",
    CLASS_ID["traffic sign"]: "traffic sign",
}
MIN_BOX_PIXELS = 4  # instances with fewer visible pixels get no box (counted as "tiny")
OCCLUSION_MARGIN_M = 0.5  # an occluder is nearer than the occluded pixel by more than this (camera z-depth)
_TOUCH_EPS = 1e-6  # metres


def instance_table(scene: Scene) -> np.ndarray:
    """(n_objects,) int64: the instance index of each object of a detection class, -1 for every other object."""
    labels = scene.obj_label.astype(np.int64)
    n = len(labels)
    det = np.isin(labels, list(DET_CATEGORY_OF_TRAIN_ID))
    lo = np.full((n, 3), np.nan)
    hi = np.full((n, 3), np.nan)
    lo[scene.box_oid], hi[scene.box_oid] = scene.box_lo, scene.box_hi  # objects without a box stay NaN: no touch
    if n < 2:
        same = np.zeros(0, dtype=bool)
    else:
        a, b = slice(0, n - 1), slice(1, n)
        touch = np.all((lo[b] <= hi[a] + _TOUCH_EPS) & (lo[a] <= hi[b] + _TOUCH_EPS), axis=1)
        same = (
            det[a]
            & det[b]
            & (labels[a] == labels[b])
            & np.all(scene.obj_velocity[a] == scene.obj_velocity[b], axis=1)
            & touch
        )
    starts = np.concatenate([[True], ~same])
    table = np.cumsum(starts) - 1
    table[~det] = -1
    return table


def _occluder_mask(scene: Scene) -> np.ndarray:
    """(n_objects,) bool: objects that can hide another one (not the ground plane, not the sky)."""
    can = np.ones(len(scene.obj_label), dtype=bool)
    can[scene.ground_oid] = False
    if scene.road_oid >= 0:
        can[scene.road_oid] = False
    can[SKY_OID] = False
    return can


def boxes_from_ids(
    object_ids: np.ndarray, depth: np.ndarray, scene: Scene, table: np.ndarray | None = None
) -> tuple[list[dict], int]:
    """Scalabel labels for one frame from its (H, W) object ids and z-depth; also the number of tiny instances.

    `truncated`: the box touches the image border. `occluded`: at least one visible pixel of the instance has a
    4-neighbour pixel of another object (not ground or sky) that is more than `OCCLUSION_MARGIN_M` nearer the
    camera, i.e. something in front of it cuts its silhouette.
    """
    table = instance_table(scene) if table is None else table
    h, w = object_ids.shape
    inst = table[object_ids]
    ys, xs = np.nonzero(inst >= 0)
    if len(ys) == 0:
        return [], 0
    ids = inst[ys, xs]
    order = np.argsort(ids, kind="stable")
    ids, ys, xs = ids[order], ys[order], xs[order]
    oids = object_ids[ys, xs]
    starts = np.flatnonzero(np.concatenate([[True], ids[1:] != ids[:-1]]))
    counts = np.diff(np.append(starts, len(ids)))
    x1, x2 = np.minimum.reduceat(xs, starts), np.maximum.reduceat(xs, starts)
    y1, y2 = np.minimum.reduceat(ys, starts), np.maximum.reduceat(ys, starts)

    # Pixels of an instance next to a nearer pixel of another (non-ground) object.
    can = _occluder_mask(scene)
    pad_inst = np.pad(inst, 1, constant_values=-1)
    pad_oid = np.pad(object_ids, 1, constant_values=SKY_OID)
    pad_depth = np.pad(depth.astype(np.float64), 1, constant_values=np.inf)
    d = depth[ys, xs].astype(np.float64)
    hidden = np.zeros(len(ys), dtype=bool)
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        ny, nx = ys + 1 + dy, xs + 1 + dx
        n_oid = pad_oid[ny, nx]
        hidden |= (pad_inst[ny, nx] != ids) & can[n_oid] & (pad_depth[ny, nx] < d - OCCLUSION_MARGIN_M)
    occluded = np.add.reduceat(hidden.astype(np.int64), starts) > 0

    first = ids[starts]
    label_ids = scene.obj_label[oids[starts]]  # all parts of an instance share its label
    labels, tiny = [], 0
    for k in range(len(starts)):
        if counts[k] < MIN_BOX_PIXELS:
            tiny += 1
            continue
        bx1, by1, bx2, by2 = int(x1[k]), int(y1[k]), int(x2[k]), int(y2[k])
        labels.append(
            {
                "id": str(int(first[k])),
                "category": DET_CATEGORY_OF_TRAIN_ID[int(label_ids[k])],
                "attributes": {
                    "occluded": bool(occluded[k]),
                    "truncated": bx1 == 0 or by1 == 0 or bx2 == w - 1 or by2 == h - 1,
                },
                "box2d": {"x1": float(bx1), "y1": float(by1), "x2": float(bx2), "y2": float(by2)},
            }
        )
    return labels, tiny


def detection_labels(seq, t: int, table: np.ndarray | None = None) -> tuple[list[dict], int]:
    """`boxes_from_ids` for frame t of a `SynthDriveSequence` (reuses its cached ray cast)."""
    return boxes_from_ids(seq.object_ids(t), seq.depth(t), seq.scene, table)
