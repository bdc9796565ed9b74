"""Cityscapes label table (facts from cityscapesScripts' `cityscapesscripts/helpers/labels.py`).

The masks shipped with Cityscapes are `*_gtFine_labelIds.png` (ids 0-33). The 19 evaluated classes are the
trainIds 0-18; everything else maps to 255 (ignore). `*_gtFine_labelTrainIds.png` is what
`csCreateTrainIdLabelImgs` writes; when it is missing we convert labelIds on the fly with `LABEL_ID_TO_TRAIN_ID`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from poodle.data.classes import BDD100K_CLASSES, IGNORE_INDEX


class CityscapesLabel(NamedTuple):
    name: str
    id: int
    train_id: int
    color: tuple[int, int, int]


_I = IGNORE_INDEX
CITYSCAPES_LABELS: tuple[CityscapesLabel, ...] = (
    CityscapesLabel("unlabeled", 0, _I, (0, 0, 0)),
    CityscapesLabel("ego vehicle", 1, _I, (0, 0, 0)),
    CityscapesLabel("rectification border", 2, _I, (0, 0, 0)),
    CityscapesLabel("out of roi", 3, _I, (0, 0, 0)),
    CityscapesLabel("static", 4, _I, (0, 0, 0)),
    CityscapesLabel("dynamic", 5, _I, (111, 74, 0)),
    CityscapesLabel("ground", 6, _I, (81, 0, 81)),
    CityscapesLabel("road", 7, 0, (128, 64, 128)),
    CityscapesLabel("sidewalk", 8, 1, (244, 35, 232)),
    CityscapesLabel("parking", 9, _I, (250, 170, 160)),
    CityscapesLabel("rail track", 10, _I, (230, 150, 140)),
    CityscapesLabel("building", 11, 2, (70, 70, 70)),
    CityscapesLabel("wall", 12, 3, (102, 102, 156)),
    CityscapesLabel("fence", 13, 4, (190, 153, 153)),
    CityscapesLabel("guard rail", 14, _I, (180, 165, 180)),
    CityscapesLabel("bridge", 15, _I, (150, 100, 100)),
    CityscapesLabel("tunnel", 16, _I, (150, 120, 90)),
    CityscapesLabel("pole", 17, 5, (153, 153, 153)),
    CityscapesLabel("polegroup", 18, _I, (153, 153, 153)),
    CityscapesLabel("traffic light", 19, 6, (250, 170, 30)),
    CityscapesLabel("traffic sign", 20, 7, (220, 220, 0)),
    CityscapesLabel("vegetation", 21, 8, (107, 142, 35)),
    CityscapesLabel("terrain", 22, 9, (152, 251, 152)),
    CityscapesLabel("sky", 23, 10, (70, 130, 180)),
    CityscapesLabel("person", 24, 11, (220, 20, 60)),
    CityscapesLabel("rider", 25, 12, (255, 0, 0)),
    CityscapesLabel("car", 26, 13, (0, 0, 142)),
    CityscapesLabel("truck", 27, 14, (0, 0, 70)),
    CityscapesLabel("bus", 28, 15, (0, 60, 100)),
    CityscapesLabel("caravan", 29, _I, (0, 0, 90)),
    CityscapesLabel("trailer", 30, _I, (0, 0, 110)),
    CityscapesLabel("train", 31, 16, (0, 80, 100)),
    CityscapesLabel("motorcycle", 32, 17, (0, 0, 230)),
    CityscapesLabel("bicycle", 33, 18, (119, 11, 32)),
    # id -1 / trainId -1 in labels.py: never written into the masks (only used for the instance annotations).
    CityscapesLabel("license plate", -1, -1, (0, 0, 142)),
)

# Ids that can appear in a labelIds PNG (0-33) -> trainId (0-18 or 255). License plate (-1) is not a pixel value.
LABEL_ID_TO_TRAIN_ID: dict[int, int] = {lab.id: lab.train_id for lab in CITYSCAPES_LABELS if lab.id >= 0}

# Same 19 classes in the same (trainId) order as BDD100K.
CITYSCAPES_CLASSES: tuple[str, ...] = BDD100K_CLASSES

# The official label colours in trainId order; BDD100K uses the same palette (the bdd100k toolkit's label.py).
CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = tuple(
    lab.color for lab in sorted(CITYSCAPES_LABELS, key=lambda lab: lab.train_id) if 0 <= lab.train_id < 19
)


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Convert a labelIds map (values 0-33) to trainIds (0-18, 255). Raises ValueError on any other value."""
    lut = np.full(256, -1, dtype=np.int16)
    for i, t in LABEL_ID_TO_TRAIN_ID.items():
        lut[i] = t
    values = np.asarray(label_ids)
    if values.size and (values.min() < 0 or values.max() > 255 or (lut[values] < 0).any()):
        bad = sorted({int(v) for v in np.unique(values) if not 0 <= v <= 255 or lut[v] < 0})
        raise ValueError(f"values {bad} are not Cityscapes labelIds (0-33)")
    return lut[values].astype(np.uint8)
