"""Labelled figures with PIL: a title, column headers, colour legends and captions around a grid of panels.

Every PNG poodle writes goes through these helpers, so each one says what its columns, colours and values mean
without the docs at hand. Text is sized from the figure's width so it stays legible when a README or a browser
shrinks a wide figure to ~800 px.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

RGB = tuple[int, int, int]
GAP = 4  # white pixels between panels


def font(size: int = 14) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at `size` px (scalable since Pillow 10.1; the fixed bitmap font before)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


def text_size(width: int) -> int:
    """Font size for a figure `width` px wide: ~1/60 of it, 13-22 px."""
    return max(13, min(22, width // 60))


def _width(f, text: str) -> int:
    return int(np.ceil(f.getlength(text)))


def _line_height(f) -> int:
    top, bottom = f.getbbox("Hg")[1], f.getbbox("Hg")[3]
    return int(bottom - min(top, 0)) + 4


def wrap(text: str, f, width: int) -> list[str]:
    """Greedy word wrap to `width` px."""
    lines: list[str] = []
    cur = ""
    for word in text.split():
        trial = f"{cur} {word}".strip()
        if cur and _width(f, trial) > width:
            lines.append(cur)
            cur = word
        else:
            cur = trial
    return [*lines, cur] if cur else lines


def text_block(paragraphs: Sequence[str], width: int, size: int, colour: RGB = (40, 40, 40)) -> Image.Image:
    """Wrapped paragraphs, left-aligned, on white."""
    f = font(size)
    lines = [line for p in paragraphs for line in wrap(p, f, width - 8)]
    lh = _line_height(f)
    img = Image.new("RGB", (width, lh * len(lines) + 6), "white")
    d = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        d.text((4, 3 + i * lh), line, fill=colour, font=f)
    return img


def column_headers(titles: Sequence[str], widths: Sequence[int], size: int, gap: int = GAP) -> Image.Image:
    """One band of titles, each centred over its column (wrapped to the column's width)."""
    f = font(size)
    lh = _line_height(f)
    wrapped = [wrap(t, f, w - 4) for t, w in zip(titles, widths)]
    rows = max(len(w) for w in wrapped)
    img = Image.new("RGB", (sum(widths) + gap * (len(widths) - 1), lh * rows + 4), "white")
    d = ImageDraw.Draw(img)
    x = 0
    for lines, w in zip(wrapped, widths):
        for i, line in enumerate(lines):
            d.text((x + (w - _width(f, line)) // 2, 2 + i * lh), line, fill="black", font=f)
        x += w + gap
    return img


def swatches(items: Sequence[tuple[str, RGB]], width: int, size: int, title: str = "") -> Image.Image:
    """Colour legend: `title` then rows of [colour box] name, flowing left to right within `width`."""
    f = font(size)
    lh = _line_height(f)
    box = lh - 6
    cells = [(name, colour, box + 6 + _width(f, name) + 14) for name, colour in items]
    x0 = _width(f, title) + 12 if title else 4
    rows: list[list[tuple[str, RGB, int]]] = [[]]
    x = x0
    for cell in cells:
        if rows[-1] and x + cell[2] > width:
            rows.append([])
            x = x0
        rows[-1].append(cell)
        x += cell[2]
    img = Image.new("RGB", (width, lh * len(rows) + 6), "white")
    d = ImageDraw.Draw(img)
    if title:
        d.text((4, 3), title, fill="black", font=f)
    for r, row in enumerate(rows):
        x, y = x0, 3 + r * lh
        for name, colour, w in row:
            d.rectangle([x, y + 2, x + box, y + 2 + box], fill=tuple(int(c) for c in colour), outline=(90, 90, 90))
            d.text((x + box + 6, y), name, fill="black", font=f)
            x += w
    return img


def label_panel(panel: np.ndarray, text: str, size: int) -> np.ndarray:
    """`panel` (H, W, 3) uint8 with `text` in a white box in its top-left corner."""
    img = Image.fromarray(panel)
    d = ImageDraw.Draw(img)
    f = font(size)
    w, h = _width(f, text), _line_height(f)
    d.rectangle([0, 0, w + 6, h], fill="white")
    d.text((3, 1), text, fill="black", font=f)
    return np.asarray(img)


def flow_wheel(diameter: int) -> np.ndarray:
    """(d, d, 3) uint8 colour wheel in `torchvision.utils.flow_to_image`'s code: a point moving in some direction is
    coloured like the wheel in that direction from its centre; white centre = still, saturated rim = fastest."""
    import torch
    from torchvision.utils import flow_to_image

    r = np.linspace(-1.0, 1.0, diameter, dtype=np.float32)
    u, v = np.meshgrid(r, r)
    inside = u**2 + v**2 <= 1.0
    flow = np.stack([np.where(inside, u, 0.0), np.where(inside, v, 0.0)]).astype(np.float32)
    return flow_to_image(torch.from_numpy(flow)).permute(1, 2, 0).numpy()


def stack(parts: Sequence[Image.Image | np.ndarray], gap: int = 0) -> Image.Image:
    """Parts one below the other, left-aligned, on white."""
    ims = [p if isinstance(p, Image.Image) else Image.fromarray(p) for p in parts]
    width = max(im.width for im in ims)
    out = Image.new("RGB", (width, sum(im.height for im in ims) + gap * (len(ims) - 1)), "white")
    y = 0
    for im in ims:
        out.paste(im, (0, y))
        y += im.height + gap
    return out


def side_by_side(parts: Sequence[Image.Image | np.ndarray], gap: int = 8) -> Image.Image:
    """Parts next to each other, top-aligned, on white."""
    ims = [p if isinstance(p, Image.Image) else Image.fromarray(p) for p in parts]
    out = Image.new("RGB", (sum(im.width for im in ims) + gap * (len(ims) - 1), max(im.height for im in ims)), "white")
    x = 0
    for im in ims:
        out.paste(im, (x, 0))
        x += im.width + gap
    return out


def titled(
    body: Image.Image | np.ndarray,
    title: str,
    columns: Sequence[str] = (),
    widths: Sequence[int] = (),
    below: Sequence[Image.Image] = (),
    notes: Sequence[str] = (),
    gap: int = GAP,
) -> Image.Image:
    """title / column headers / body / legends (`below`) / notes, as one image with a white margin."""
    body = body if isinstance(body, Image.Image) else Image.fromarray(body)
    size = text_size(body.width)
    parts: list[Image.Image] = [text_block([title], body.width, size + 2, colour=(0, 0, 0))]
    if columns:
        parts.append(column_headers(columns, widths, size, gap))
    parts += [body, *below]
    if notes:
        parts.append(text_block(notes, body.width, size))
    inner = stack(parts, gap=4)
    out = Image.new("RGB", (inner.width + 16, inner.height + 16), "white")
    out.paste(inner, (8, 8))
    return out
