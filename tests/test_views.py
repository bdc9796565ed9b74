"""Views of the image-SSL baselines: random resized crops, flips and solarise against known answers."""

import math

import torch
from torchvision.transforms import v2

from poodle.config import AugmentConfig
from poodle.data.subcrops import crop_and_resize
from poodle.objective.views import hflip, make_views, random_resized_boxes, solarize, view_sources


def _gen(seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def test_full_scale_square_box_is_the_whole_frame_and_the_crop_is_the_identity():
    frames = torch.rand(3, 3, 32, 32)
    boxes = random_resized_boxes(3, (32, 32), (1.0, 1.0), (1.0, 1.0), "cpu", _gen())
    assert torch.equal(boxes, torch.tensor([[0.0, 0.0, 32.0, 32.0]] * 3))
    crops = crop_and_resize(frames, boxes.view(3, 1, 4), (32, 32))
    assert torch.allclose(crops, frames, atol=1e-6)


def test_a_known_box_cuts_exactly_those_pixels():
    frame = torch.arange(16 * 16, dtype=torch.float32).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    box = torch.tensor([[[4.0, 2.0, 12.0, 10.0]]])  # x1, y1, x2, y2: an 8 x 8 window at row 2, column 4
    crop = crop_and_resize(frame, box, (8, 8))
    assert torch.allclose(crop, frame[:, :, 2:10, 4:12], atol=1e-4)


def test_boxes_follow_torchvisions_rule():
    n, hw, scale, ratio = 4000, (64, 128), (0.08, 1.0), (3 / 4, 4 / 3)
    boxes = random_resized_boxes(n, hw, scale, ratio, "cpu", _gen(1))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 128).all() and (boxes[:, 3] <= 64).all()
    assert torch.equal(boxes, boxes.round())  # integer pixel edges, as torchvision's ints
    frac = (w * h) / (64 * 128)
    # Same distribution as torchvision's get_params (a fit-or-retry rule, so not simply uniform): compare means.
    torch.manual_seed(0)
    ref = torch.tensor([v2.RandomResizedCrop.get_params(torch.empty(3, 64, 128), list(scale), list(ratio))
                        for _ in range(n)], dtype=torch.float32)  # fmt: skip
    ref_frac = ref[:, 2] * ref[:, 3] / (64 * 128)
    assert abs(frac.mean() - ref_frac.mean()) < 0.02
    assert abs((w / h).log().mean() - (ref[:, 3] / ref[:, 2]).log().mean()) < 0.03


def test_no_fitting_try_falls_back_to_the_central_crop_in_the_ratio_range():
    # Scale 1 with ratio exactly 1 on a 64 x 128 frame never fits a square of area 8192; torchvision then takes
    # the central 64 x 64 crop.
    boxes = random_resized_boxes(5, (64, 128), (1.0, 1.0), (1.0, 1.0), "cpu", _gen())
    assert torch.equal(boxes, torch.tensor([[32.0, 0.0, 96.0, 64.0]] * 5))


def test_non_square_outputs_keep_the_aspect_relative_to_the_output():
    boxes = random_resized_boxes(500, (64, 128), (0.3, 0.3), (1.0, 1.0), "cpu", _gen(), out_aspect=2.0)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert torch.allclose(w / h, torch.full_like(w, 2.0), atol=0.1)
    assert torch.allclose(w * h / (64 * 128), torch.full_like(w, 0.3), atol=0.02)


def test_flip_and_solarise_known_answers():
    x = torch.rand(6, 3, 4, 5)
    out, flipped = hflip(x, 0.5, _gen(2))
    for i in range(6):
        assert torch.equal(out[i], x[i].flip(-1) if flipped[i] else x[i])
    v = torch.tensor([0.0, 0.4, 127 / 255, 128 / 255, 0.9, 1.0]).view(1, 1, 1, 6).expand(2, 3, 1, 6)
    s = solarize(v, 1.0, _gen())
    assert torch.allclose(s[0, 0, 0], torch.tensor([0.0, 0.4, 127 / 255, 127 / 255, 0.1, 0.0]))
    assert torch.equal(solarize(v, 0.0, _gen()), v)


def test_make_views_shapes_boxes_and_normalisation():
    frames = (torch.rand(4, 3, 64, 128) * 255).to(torch.uint8)
    v = make_views(frames, (32, 64), (0.2, 1.0), (0.75, 4 / 3), AugmentConfig(), 1.0, 0.2, _gen(3))
    assert v.images.shape == (4, 3, 32, 64) and v.boxes.shape == (4, 4) and v.flipped.shape == (4,)
    assert v.images.dtype == torch.float32 and math.isfinite(float(v.images.sum()))
    assert float(v.images.min()) < 0  # ImageNet-normalised
    a, b = torch.zeros(1), torch.ones(1)
    assert view_sources(a, b, "frames") == (a, b) and view_sources(a, b, "crops") == (a, a)
