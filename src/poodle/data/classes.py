"""The 19 BDD100K / Cityscapes semantic classes (trainId order), their palette and the ignore value."""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255

BDD100K_CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)

# BDD100K's palette: the Cityscapes trainId colours, as the bdd100k toolkit (bdd100k/label/label.py) and mmseg
# use them (wall (102, 102, 156), fence (190, 153, 153)).
BDD100K_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
)

CLASS_ID = {name: i for i, name in enumerate(BDD100K_CLASSES)}


def colorize(labels: np.ndarray, palette=BDD100K_PALETTE) -> np.ndarray:
    """Map an (H, W) integer label map to an (H, W, 3) uint8 image; ignore (255) is black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return lut[labels.astype(np.uint8)]
