"""`preview.png` of a SynthDrive dataset: a few flow pairs with their exact labels, flow and occlusion, labelled."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from poodle.data.classes import BDD100K_CLASSES, BDD100K_PALETTE, colorize
from poodle.figure_layout import GAP, flow_wheel, label_panel, side_by_side, swatches, text_block, text_size, titled

HIDDEN_GREY = 128  # flow panel colour where the point is not visible at t + dt (its flow is not shown)


def flow_panel(flow: np.ndarray, occ: np.ndarray) -> tuple[np.ndarray, float]:
    """(H, W, 2) flow, (H, W) occlusion -> (H, W, 3) colour-coded flow, grey where occluded; and the largest visible
    motion in px, which the colours are scaled to (`torchvision.utils.flow_to_image` normalises by it)."""
    import torch
    from torchvision.utils import flow_to_image

    # Occluded / out-of-view points can have huge flows that would wash out the colour scale.
    shown = np.where(occ[..., None], np.float32(0.0), flow)
    rgb = flow_to_image(torch.from_numpy(shown).permute(2, 0, 1)).permute(1, 2, 0).numpy().copy()
    rgb[occ] = HIDDEN_GREY
    return rgb, float(np.sqrt((shown**2).sum(-1)).max())


def write_preview(path: Path, rows: list[tuple], fps: float) -> None:
    """rows: (frame t, frame t + dt, labels at t, flow t -> t + dt, occlusion, dt in frames) per flow pair."""
    size = text_size(5 * rows[0][0].shape[1])
    lines, present = [], set()
    for frame, frame2, labels, flow, occ, dt in rows:
        flow_rgb, top = flow_panel(flow, occ)
        occ_rgb = np.repeat(occ[..., None].astype(np.uint8) * 255, 3, axis=2)
        panels = [
            frame,
            label_panel(frame2, f"dt = {dt} frames ({dt / fps:.2f} s)", size - 2),
            colorize(labels),
            label_panel(flow_rgb, f"max {top:.1f} px", size - 2),
            occ_rgb,
        ]
        gap = np.full((frame.shape[0], GAP, 3), 255, np.uint8)
        lines.append(np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1))
        present.update(int(c) for c in np.unique(labels) if c < len(BDD100K_CLASSES))
    gap_row = np.full((GAP, lines[0].shape[1], 3), 255, np.uint8)
    grid = np.concatenate([p for line in lines for p in (line, gap_row)][:-1], axis=0)
    width = grid.shape[1]
    classes = swatches([(BDD100K_CLASSES[c], BDD100K_PALETTE[c]) for c in sorted(present)], width, size, "labels:")
    wheel_d = 4 * size
    wheel = flow_wheel(wheel_d)
    flow_text = text_block(
        [
            "flow: colour = direction of motion from t to t + dt, as on this wheel (a point moving right is "
            "coloured like the wheel's right edge, moving down like its bottom); paler = slower, white = still; "
            "the most saturated colour is the row's largest motion, printed on the panel. Grey: the point is not "
            "visible at t + dt, so it has no flow to show.",
            "occlusion: white = the surface point seen at t is not visible at t + dt (hidden behind something "
            "or out of the frame); black = visible in both frames.",
        ],
        width - wheel_d - 8,
        size,
    )
    legend = side_by_side([wheel, flow_text])
    columns = ["frame t", "frame t + dt", "semantic labels at t", "optical flow, t to t + dt", "occlusion mask"]
    fig = titled(
        grid,
        "SynthDrive preview: frame pairs with their exact labels, optical flow and occlusion (one pair per row)",
        columns,
        [rows[0][0].shape[1]] * 5,
        below=[classes, legend],
    )
    fig.save(path)
