"""Subcrop-hit vs pixel probability (spec §1.3, App. C): known answers on constructed masks, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from poodle.evaluation.subcrop_hits import foreground_indices, subcrop_hit_analysis

NAMES = ["background", "car", "person"]
# A 64 x 128 (2:1) image with global_area (1, 1) makes the global crop the whole image (64 x 128), and
# subcrop_area 256 / 8192 makes every subcrop an exact 16 x 16 square: positions are then the only randomness.
WHOLE = {"global_area": (1.0, 1.0), "subcrop_area": (256 / 8192, 256 / 8192)}


def test_object_filling_the_crop_is_always_hit() -> None:
    m = np.full((64, 128), 1, np.uint8)
    r = subcrop_hit_analysis([m], NAMES, [1, 2], subcrops_per_crop=64, **WHOLE)
    assert r.pairs == 2  # one (crop, car) pair per global crop; person is absent: not counted
    assert [b.count for b in r.bins] == [1, 1]
    for b in r.bins:
        assert b.pixel_probability == 1.0 and b.hit_probability == 1.0 and b.gain == 1.0


def test_absent_class_is_not_counted() -> None:
    m = np.zeros((64, 128), np.uint8)
    r = subcrop_hit_analysis([m], NAMES, [1, 2], subcrops_per_crop=16, **WHOLE)
    assert r.images == 1 and r.pairs == 0 and r.bins == []
    m[:, :64] = 2  # person on the left half only
    r = subcrop_hit_analysis([m], NAMES, [1, 2], subcrops_per_crop=16, crops_per_image=1, **WHOLE)
    assert r.pairs == 1 and r.bins[0].pixel_probability == 0.5


def test_small_object_hits_more_subcrops_than_pixels() -> None:
    # An 8 x 8 car (64 px, 0.78 % of the crop) well inside the frame. A 16 x 16 subcrop at top-left (y, x),
    # y in [0, 48], x in [0, 112] (49 * 113 = 5537 positions), overlaps it by oy * ox pixels, where along each axis
    # the overlap is 8 for 9 positions and k = 1..7 for 2 positions each. A hit needs oy * ox >= 0.05 * 256 = 12.8.
    # Counting pairs (oy, ox) with oy * ox >= 13: 2 * (11 + 15 + 17 + 19 + 19 + 21) + 9 * 21 = 393 positions,
    # so P(hit) = 393 / 5537 = 7.10 % vs a pixel probability of 0.78 %: a 9x gain.
    m = np.zeros((64, 128), np.uint8)
    m[28:36, 60:68] = 1
    r = subcrop_hit_analysis([m], NAMES, [1], subcrops_per_crop=20000, crops_per_image=2, bins=1, **WHOLE)
    (b,) = r.bins
    assert b.pixel_probability == pytest.approx(64 / 8192)
    assert b.hit_probability == pytest.approx(393 / 5537, abs=0.006)  # ~4 sigma of 40,000 Bernoulli draws
    assert b.gain > 8.0


def test_brute_force_agrees_on_random_crops() -> None:
    # Independent check of the integral-image counting: loop over a few crops/subcrops with plain slicing.
    from poodle.evaluation.subcrop_hits import _crop_boxes

    rng = np.random.default_rng(3)
    m = rng.integers(0, 3, size=(40, 90)).astype(np.uint8)
    m[5:20, 10:40] = 1
    r = subcrop_hit_analysis([m], NAMES, [1, 2], subcrops_per_crop=50, crops_per_image=1, bins=2, seed=7)
    g = np.random.default_rng(7)  # replay the same draws
    (cy, cx, ch, cw) = _crop_boxes(g, 40, 90, 1, (0.16, 0.45), 2.0)[0]
    subs = _crop_boxes(g, int(ch), int(cw), 50, (0.02, 0.03), 1.0)
    crop = m[cy : cy + ch, cx : cx + cw]
    expected = {}
    for c in (1, 2):
        hits = [(crop[y : y + h, x : x + w] == c).sum() >= 0.05 * h * w for y, x, h, w in subs]
        expected[float((crop == c).mean())] = float(np.mean(hits))
    got = {b.pixel_probability: b.hit_probability for b in r.bins}
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert got[k] == pytest.approx(v)


def test_deterministic_with_a_seed() -> None:
    rng = np.random.default_rng(0)
    masks = [rng.integers(0, 3, size=(32, 64)).astype(np.uint8) for _ in range(3)]
    a = subcrop_hit_analysis(masks, NAMES, [1, 2], subcrops_per_crop=32, bins=3, seed=5)
    b = subcrop_hit_analysis(masks, NAMES, [1, 2], subcrops_per_crop=32, bins=3, seed=5)
    c = subcrop_hit_analysis(masks, NAMES, [1, 2], subcrops_per_crop=32, bins=3, seed=6)
    assert a.to_dict() == b.to_dict()
    assert a.to_dict() != c.to_dict()


def test_foreground_names_match_loosely() -> None:
    assert foreground_indices(["road", "Traffic_Light", "car", "sky"]) == [1, 2]


def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from poodle.cli import main
    from poodle.data.synthdrive import generate_dataset

    root = tmp_path / "sd"
    generate_dataset(root, preset="small", seed=0, resolution=(64, 128), train_videos=1, val_videos=1, seconds=1.0,
                     flow_pairs=0, train_images=16, val_images=4, progress=False)  # fmt: skip
    out = tmp_path / "out"
    argv = ["analyze", "subcrops", "--dataset", "synthdrive", "--data", str(root), "--limit", "6"]
    assert main([*argv, "--subcrops", "64", "--bins", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| bin | object size" in text and "6 label maps" in text
    d = json.loads((out / "subcrop_hits.json").read_text())
    assert d["images"] == 6 and d["settings"]["subcrops_per_crop"] == 64 and 1 <= len(d["bins"]) <= 3
    assert sum(b["count"] for b in d["bins"]) == d["pairs"] > 0
    assert (out / "subcrop_hits.png").stat().st_size > 0
    assert main([*argv, "--foreground", "unicorn"]) == 2  # no such class: a user error, not a traceback
