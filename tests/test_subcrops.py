"""Known-answer tests for poodle.data.subcrops (spec 3.7, decisions 6-9)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.transforms.v2 import functional as TF

from poodle.config import AugmentConfig, ConfigError, SubcropConfig
from poodle.data.augment import photometric, sample_dense_geometry
from poodle.data.flow import backward_warp, in_bounds_mask, occlusion_mask, resize_flow
from poodle.data.subcrops import (
    crop_and_resize,
    crop_pairs,
    flow_aware_subcrops,
    grid_shape,
    pair_sources,
    resize_weights,
)

H, W = 128, 256


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _const_flow(b: int, dx: float, dy: float, h: int = H, w: int = W) -> torch.Tensor:
    flow = torch.zeros(b, 2, h, w)
    flow[:, 0], flow[:, 1] = dx, dy
    return flow


def _sizes(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return boxes[..., 3] - boxes[..., 1], boxes[..., 2] - boxes[..., 0]


def test_grid_shape_matches_the_release():
    assert grid_shape(512, 1024, (0.05, 0.3)) == (214, 3, 5)  # 15 cells, last row/column partial
    assert grid_shape(H, W, (0.05, 0.3)) == (54, 3, 5)
    # when d divides H the release's extra row would be empty: it is dropped
    assert grid_shape(100, 200, (0.25, 0.25)) == (50, 2, 4)


def test_boxes_are_inside_the_image_with_areas_and_ratios_in_range():
    cfg = SubcropConfig()
    flow = torch.randn(8, 2, H, W, generator=_gen(0)) * 10
    boxes = flow_aware_subcrops(flow, cfg, _gen(1))
    assert boxes.online.shape == (8, 6, 4) and boxes.target.shape == (8, 6, 4)
    assert boxes.source_is_pair.shape == (8, 6) and boxes.source_is_pair.dtype == torch.bool
    for b in (boxes.online, boxes.target):
        assert (b[..., 0] >= 0).all() and (b[..., 1] >= 0).all()
        assert (b[..., 2] <= W).all() and (b[..., 3] <= H).all()
        assert (b[..., 2] > b[..., 0]).all() and (b[..., 3] > b[..., 1]).all()
        assert torch.equal(b, b.round())  # integer pixel edges
    oh, ow = _sizes(boxes.online)
    area = oh * ow / (H * W)
    assert (area > 0.05 * 0.93).all() and (area < 0.3 * 1.07).all()
    ratio = ow / oh
    assert (ratio > 0.75 * 0.93).all() and (ratio < 4 / 3 * 1.07).all()
    # the online box is centred on the online centre (h//2 above / left of it)
    torch.testing.assert_close(boxes.online[..., 1], boxes.online_centre[..., 0].float() - (oh // 2))
    torch.testing.assert_close(boxes.online[..., 0], boxes.online_centre[..., 1].float() - (ow // 2))
    # target area ~ U[s_online, 0.3]: unclamped target boxes are at least (about) as large as their online box
    th, tw = _sizes(boxes.target)
    t = boxes.target
    interior = (t[..., 0] > 0) & (t[..., 1] > 0) & (t[..., 2] < W) & (t[..., 3] < H)
    assert interior.sum() > 10
    assert ((th * tw) / (oh * ow))[interior].min() > 0.85
    assert ((th * tw) / (H * W) < 0.3 * 1.07).all()


def test_constant_translation_moves_centres_exactly():
    cfg = dataclasses.replace(SubcropConfig(), jitter=0.0)
    boxes = flow_aware_subcrops(_const_flow(4, dx=5.0, dy=-3.0), cfg, _gen(2))
    assert boxes.source_is_pair.all()
    expected = boxes.online_centre + torch.tensor([-3, 5])
    assert torch.equal(boxes.paired_centre, expected)
    # a target box that was not clamped is centred on the paired centre (h'//2 above, w'//2 left)
    th, tw = _sizes(boxes.target)
    t = boxes.target
    interior = (t[..., 0] > 0) & (t[..., 1] > 0) & (t[..., 2] < W) & (t[..., 3] < H)
    assert interior.any()
    assert torch.equal(t[..., 1][interior], (expected[..., 0] - th.long() // 2).float()[interior])
    assert torch.equal(t[..., 0][interior], (expected[..., 1] - tw.long() // 2).float()[interior])


def test_jitter_stays_within_its_range():
    cfg = dataclasses.replace(SubcropConfig(), jitter=0.1)
    boxes = flow_aware_subcrops(_const_flow(16, 0.0, 0.0), cfg, _gen(3))
    found = boxes.source_is_pair
    delta = (boxes.paired_centre - boxes.online_centre)[found].abs()
    assert (delta[:, 0] <= round(0.1 * H)).all() and (delta[:, 1] <= round(0.1 * W)).all()
    assert delta.float().std() > 1  # and it does jitter


def test_fallback_when_flow_points_out_of_bounds_everywhere():
    boxes = flow_aware_subcrops(_const_flow(3, dx=10.0 * W, dy=0.0), SubcropConfig(), _gen(4))
    assert not boxes.source_is_pair.any()
    assert torch.equal(boxes.paired_centre, boxes.online_centre)
    index = pair_sources(boxes.source_is_pair, torch.tensor([1, 2, 0]))
    assert torch.equal(index, torch.arange(3).view(3, 1).expand(3, 6))


def test_first_successful_try_is_used():
    # Left half: zero flow (always in bounds with zero jitter); right half: flow out of the image.
    flow = _const_flow(16, 0.0, 0.0)
    flow[:, 0, :, W // 2 :] = 10.0 * W
    cfg = dataclasses.replace(SubcropConfig(), jitter=0.0)
    boxes = flow_aware_subcrops(flow, cfg, _gen(5))
    x = boxes.online_centre[..., 1]
    found = boxes.source_is_pair
    assert found.any() and not found.all()
    assert (x[found] < W // 2).all()  # a found pair is centred where the flow stays in bounds
    d, _, cols = grid_shape(H, W, cfg.area)
    cell_left = (boxes.cell % cols) * d
    assert not found[cell_left >= W // 2].any()  # cells entirely on the right never find a pair
    assert torch.equal(boxes.paired_centre[found], boxes.online_centre[found])


def test_k_distinct_cells_and_centres_in_their_cell():
    cfg = SubcropConfig()
    boxes = flow_aware_subcrops(torch.zeros(32, 2, H, W), cfg, _gen(6))
    d, rows, cols = grid_shape(H, W, cfg.area)
    cells = boxes.cell
    assert cells.shape == (32, cfg.num)
    assert all(len(set(row.tolist())) == cfg.num for row in cells)
    assert cells.min() >= 0 and cells.max() < rows * cols
    # centres lie in their cell unless the clamp that keeps the box inside the image moved them
    oh, ow = _sizes(boxes.online)
    cy, cx = boxes.online_centre.unbind(-1)
    top, left = (cells // cols) * d, (cells % cols) * d
    in_y = (cy >= top) & (cy < (top + d).clamp_max(H))
    in_x = (cx >= left) & (cx < (left + d).clamp_max(W))
    clamped_y = (cy == oh.long() // 2) | (cy == H - oh.long() + oh.long() // 2)
    clamped_x = (cx == ow.long() // 2) | (cx == W - ow.long() + ow.long() // 2)
    assert (in_y | clamped_y).all() and (in_x | clamped_x).all()
    assert in_y.float().mean() > 0.5
    # every cell gets used across the batch (no centre bias towards some cells)
    assert torch.unique(cells).numel() == rows * cols
    # K larger than the grid: drawn with replacement
    many = flow_aware_subcrops(torch.zeros(2, 2, H, W), dataclasses.replace(cfg, num=40), _gen(7))
    assert many.cell.shape == (2, 40)


def test_sampling_is_deterministic_with_a_generator():
    flow = torch.randn(2, 2, H, W, generator=_gen(0)) * 20
    a = flow_aware_subcrops(flow, SubcropConfig(), _gen(9))
    b = flow_aware_subcrops(flow, SubcropConfig(), _gen(9))
    c = flow_aware_subcrops(flow, SubcropConfig(), _gen(10))
    assert torch.equal(a.online, b.online) and torch.equal(a.target, b.target)
    assert not torch.equal(a.online, c.online)


def _outward_flow(b: int, scale: float = 0.15) -> torch.Tensor:
    # forward ego-motion: the scene expands away from the image centre
    ys, xs = torch.meshgrid(torch.arange(H) - H / 2, torch.arange(W) - W / 2, indexing="ij")
    return torch.stack((xs, ys)).expand(b, 2, H, W) * scale


def test_inside_clamp_keeps_every_online_box_inside_the_image():
    boxes = flow_aware_subcrops(_outward_flow(64), SubcropConfig(clamp="inside"), _gen(20))
    o = boxes.online
    assert (o[..., :2] >= 0).all() and (o[..., 2] <= W).all() and (o[..., 3] <= H).all()


def test_release_clamp_lets_online_boxes_pass_the_bottom_right_edge_only():
    cfg = SubcropConfig(clamp="release")
    boxes = flow_aware_subcrops(_outward_flow(64), cfg, _gen(20))
    o, t = boxes.online, boxes.target
    assert (o[..., 0] >= 0).all() and (o[..., 1] >= 0).all()  # never past the top/left
    past = (o[..., 2] > W) | (o[..., 3] > H)
    assert past.float().mean() > 0.2  # the release's boxes do run past the bottom/right edge
    # the centre is only clamped from below: i >= h//2, j >= w//2, and still in the image (the flow is read there)
    oh, ow = _sizes(o)
    cy, cx = boxes.online_centre.unbind(-1)
    assert (cy >= oh.long() // 2).all() and (cx >= ow.long() // 2).all() and (cy < H).all() and (cx < W).all()
    # target boxes are clamped into the image in both modes
    assert (t[..., :2] >= 0).all() and (t[..., 2] <= W).all() and (t[..., 3] <= H).all()
    # with the same draws both modes use the same cells and sizes; only the centres' clamp differs
    inside = flow_aware_subcrops(_outward_flow(64), SubcropConfig(clamp="inside"), _gen(20))
    assert torch.equal(inside.cell, boxes.cell)
    assert torch.equal(_sizes(inside.online)[0], oh) and torch.equal(_sizes(inside.online)[1], ow)
    # and the release's crops of those boxes are zero-padded past the edge
    img = torch.rand(64, 3, H, W, generator=_gen(21)) + 0.5
    b, k = past.nonzero()[0].tolist()
    crop = crop_and_resize(
        img[b : b + 1], o[b : b + 1, k : k + 1], (int(o[b, k, 3] - o[b, k, 1]), int(o[b, k, 2] - o[b, k, 0]))
    )
    x1, y1, x2, y2 = o[b, k].long().tolist()
    assert (crop[0, :, H - y1 :] == 0).all() and (crop[0, :, :, W - x1 :] == 0).all()
    assert (crop[0, :, : H - y1, : W - x1] > 0).all()


def test_subcrop_config_switches_are_validated():
    SubcropConfig(clamp="release", crop_mode="roi_align").validate()
    with pytest.raises(ConfigError, match="subcrops.clamp"):
        SubcropConfig(clamp="outside").validate()
    with pytest.raises(ConfigError, match="subcrops.crop_mode"):
        SubcropConfig(crop_mode="bilinear").validate()
    with pytest.raises(ValueError, match="clamp"):
        flow_aware_subcrops(torch.zeros(1, 2, H, W), SubcropConfig(clamp="outside"))
    with pytest.raises(ValueError, match="crop mode"):
        crop_and_resize(torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 4), 4, mode="bilinear")


# ----------------------------------------------------------------------------------------------- cropping


def _torchvision_loop(img: torch.Tensor, boxes: torch.Tensor, size, index: torch.Tensor | None = None) -> torch.Tensor:
    """The release's crops: one torchvision resized_crop (bilinear, antialias on, zero padding) per box."""
    b, k = boxes.shape[:2]
    index = torch.arange(b).view(b, 1).expand(b, k) if index is None else index
    size = [size, size] if isinstance(size, int) else list(size)
    return torch.stack([
        TF.resized_crop(img[i], y1, x1, y2 - y1, x2 - x1, size, antialias=True)
        for i, (x1, y1, x2, y2) in zip(index.flatten().tolist(), boxes.reshape(-1, 4).long().tolist(), strict=True)
    ])  # fmt: skip


def _random_boxes(n: int, h: int, w: int, g: torch.Generator) -> torch.Tensor:
    """Integer boxes from 1 px to twice the image, overlapping it, many past an edge (any side)."""
    bh = torch.randint(1, 2 * h, (n,), generator=g)
    bw = torch.randint(1, 2 * w, (n,), generator=g)
    y1 = (torch.rand(n, generator=g) * (h + bh - 1)).long() - bh + 1
    x1 = (torch.rand(n, generator=g) * (w + bw - 1)).long() - bw + 1
    return torch.stack((x1, y1, x1 + bw, y1 + bh), -1).float()


@pytest.mark.parametrize("size", [16, (24, 40), 1, (57, 13)])
def test_resized_crop_mode_equals_torchvision_resized_crop(size):
    img = torch.rand(3, 3, 30, 50, generator=_gen(0))
    g = _gen(1)
    boxes = _random_boxes(3 * 60, 30, 50, g).view(3, 60, 4)
    # and release-style boxes: 1-px boxes, past the bottom/right edge, exactly the output size, the whole image
    boxes[0, :4] = torch.tensor(
        [[7.0, 5.0, 8.0, 6.0], [40.0, 22.0, 80.0, 45.0], [3.0, 4.0, 19.0, 20.0], [0, 0, 50, 30]]
    )
    index = torch.randint(0, 3, (3, 60), generator=g)
    out = crop_and_resize(img, boxes, size, index)
    ref = _torchvision_loop(img, boxes, size, index)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    side = torch.minimum(boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]).flatten()
    out_side = min(size) if isinstance(size, tuple) else size
    assert (side <= out_side).any() and (side > out_side).any()  # both upsampled and shrunk boxes were tested


def test_resized_crop_mode_equals_torchvision_on_sampled_boxes_of_both_clamps():
    flow = torch.randn(4, 2, H, W, generator=_gen(0)) * 20
    img = torch.rand(4, 3, H, W, generator=_gen(1))
    for clamp in ("inside", "release"):
        boxes = flow_aware_subcrops(flow, SubcropConfig(clamp=clamp), _gen(2))
        for bx in (boxes.online, boxes.target):
            torch.testing.assert_close(crop_and_resize(img, bx, 48), _torchvision_loop(img, bx, 48), rtol=0, atol=1e-5)


def test_resize_weights_known_answer():
    # 16 px -> 8: scale 2, a triangle of support 2: taps [1, 3, 3, 1] / 8 inside, renormalised at the box edge
    w = resize_weights(torch.tensor([0]), torch.tensor([16]), 8, 16)[0]
    torch.testing.assert_close(w[3, 5:9], torch.tensor([1.0, 3.0, 3.0, 1.0]) / 8)
    assert w[3, :5].sum() == 0 and w[3, 9:].sum() == 0
    torch.testing.assert_close(w[0, :3], torch.tensor([3.0, 3.0, 1.0]) / 7)
    # the same box starting one pixel above the image: tap -1 falls in the zero padding, keeping its weight share
    w = resize_weights(torch.tensor([-1]), torch.tensor([16]), 8, 16)[0]
    torch.testing.assert_close(w[0, :2], torch.tensor([3.0, 1.0]) / 7)
    # upsampling is plain bilinear clamped at the box edge: 2 px -> 4 samples at -0.25, 0.25, 0.75, 1.25
    w = resize_weights(torch.tensor([3]), torch.tensor([2]), 4, 8)[0]
    expected = torch.tensor([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])
    torch.testing.assert_close(w[:, 3:5], expected)
    assert w[:, :3].sum() == 0 and w[:, 5:].sum() == 0
    # every weight row sums to 1 for a box inside the image
    w = resize_weights(torch.tensor([2, 0, 5]), torch.tensor([37, 1, 3]), 11, 40)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 11))


def test_crops_at_their_own_size_are_slices():
    img = torch.rand(2, 3, 24, 36, generator=_gen(0))
    whole = torch.tensor([0.0, 0.0, 36.0, 24.0]).expand(2, 1, 4)
    assert torch.equal(crop_and_resize(img, whole, (24, 36)), img)  # identity
    # an integer translation at the box's own size is the slice; past the edge, zero-padded
    boxes = torch.tensor([[[5.0, 3.0, 21.0, 19.0], [30.0, 20.0, 46.0, 36.0]]])
    out = crop_and_resize(img[:1], boxes, 16)
    assert torch.equal(out[0], img[0, :, 3:19, 5:21])
    assert torch.equal(out[1], F.pad(img[0, :, 20:, 30:], (0, 10, 0, 12)))


def test_crop_modes_agree_inside_upscaled_crops_and_roi_align_is_plain_interpolate():
    img = torch.rand(2, 3, 24, 36, generator=_gen(0))
    whole = torch.tensor([0.0, 0.0, 36.0, 24.0]).expand(2, 1, 4)
    for size in (16, 50):
        ref = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False)
        torch.testing.assert_close(crop_and_resize(img, whole, size, mode="roi_align"), ref, atol=1e-5, rtol=0)
        aa = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        torch.testing.assert_close(crop_and_resize(img, whole, size), aa, atol=1e-5, rtol=0)
    # roi_align with a 2x shrink averages 2x2 pixels (no antialias); a 1x box is a slice in both modes
    boxes = torch.tensor([[[5.0, 3.0, 21.0, 19.0], [7.0, 2.0, 15.0, 10.0]]])
    out = crop_and_resize(img[:1], boxes, 8, mode="roi_align")
    torch.testing.assert_close(out[0], F.avg_pool2d(img[:1, :, 3:19, 5:21], 2)[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], img[0, :, 2:10, 7:15], atol=1e-5, rtol=0)
    # an upscaled box: the modes agree except in the outer samples, where roi_align reads outside the box
    box = torch.tensor([[[10.0, 6.0, 18.0, 14.0]]])
    a, b = crop_and_resize(img[:1], box, 32, mode="roi_align"), crop_and_resize(img[:1], box, 32)
    torch.testing.assert_close(a[..., 3:-3, 3:-3], b[..., 3:-3, 3:-3], atol=1e-5, rtol=0)
    assert (a - b).abs().max() > 1e-3


def test_crop_dtypes_and_degenerate_boxes():
    img = torch.rand(1, 3, 30, 40, generator=_gen(1))
    boxes = torch.tensor([[[7.0, 2.0, 15.0, 10.0], [3.0, 1.0, 33.0, 25.0]]])
    u8 = (img * 255).round().to(torch.uint8)
    for mode in ("resized_crop", "roi_align"):
        out = crop_and_resize(u8, boxes, (8, 8), mode=mode)
        assert out.dtype == torch.uint8 and torch.equal(out[0], u8[0, :, 2:10, 7:15])
    # uint8 against torchvision's own uint8 path: within one level
    ref = _torchvision_loop(u8, boxes, 8)
    assert (crop_and_resize(u8, boxes, 8).int() - ref.int()).abs().max() <= 1
    # bf16 in, bf16 out, computed in float32
    out = crop_and_resize(img.bfloat16(), boxes, 8)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), crop_and_resize(img.bfloat16().float(), boxes, 8), atol=1e-2, rtol=0)
    # zero-area, inverted and out-of-image boxes give zeros, never NaN
    bad = torch.tensor([[[5.0, 5.0, 5.0, 9.0], [9.0, 9.0, 4.0, 4.0], [50.0, 40.0, 60.0, 50.0], [-9.0, 0.0, -1.0, 8.0]]])
    for mode in ("resized_crop", "roi_align"):
        out = crop_and_resize(img, bad, 6, mode=mode)
        assert torch.isfinite(out).all()
    assert (crop_and_resize(img, bad, 6) == 0).all()


def test_gradients_flow_to_the_images_as_through_torchvision():
    img = torch.rand(2, 3, 20, 30, generator=_gen(2))
    boxes = torch.tensor(
        [[[2.0, 3.0, 12.0, 9.0], [5.0, 0.0, 35.0, 20.0]], [[0.0, 0.0, 30.0, 20.0], [20.0, 14.0, 26.0, 26.0]]]
    )
    weight = torch.rand(4, 3, 7, 9, generator=_gen(3))
    a = img.clone().requires_grad_()
    (crop_and_resize(a, boxes, (7, 9)) * weight).sum().backward()
    b = img.clone().requires_grad_()
    (_torchvision_loop(b, boxes, (7, 9)) * weight).sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-5)


def test_crop_pairs_takes_targets_from_the_right_frame():
    flow = _const_flow(4, 0.0, 0.0)
    flow[:, 0, :, W // 2 :] = 10.0 * W
    boxes = flow_aware_subcrops(flow, dataclasses.replace(SubcropConfig(), jitter=0.0), _gen(11))
    found = boxes.source_is_pair
    assert found.any() and not found.all()
    online = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, H, W)  # image b has value b
    paired = online + 10
    a_on, a_tg = crop_pairs(online, boxes, 12, paired_frames=paired)
    assert a_on.shape == a_tg.shape == (4 * 6, 3, 12, 12)
    b_idx = torch.arange(4).repeat_interleave(6).float()
    torch.testing.assert_close(a_on.mean((1, 2, 3)), b_idx)
    expected = torch.where(found.flatten(), b_idx + 10, b_idx)
    torch.testing.assert_close(a_tg.mean((1, 2, 3)), expected)
    # the symmetric batch: paired frames are rows of the online batch
    perm = torch.tensor([2, 3, 0, 1])
    s_on, s_tg = crop_pairs(online, boxes, 12, paired_index=perm)
    torch.testing.assert_close(s_on, a_on)
    expected = torch.where(found.flatten(), perm.repeat_interleave(6).float(), b_idx)
    torch.testing.assert_close(s_tg.mean((1, 2, 3)), expected)
    # the crops are the boxes' contents
    img = torch.rand(4, 3, H, W, generator=_gen(12))
    on, _ = crop_pairs(img, boxes, 20, paired_index=perm)
    torch.testing.assert_close(on, crop_and_resize(img, boxes.online, 20))
    on, _ = crop_pairs(img, boxes, 20, paired_index=perm, mode="roi_align")
    torch.testing.assert_close(on, crop_and_resize(img, boxes.online, 20, mode="roi_align"))
    assert math.isclose(float(on.mean()), float(img.mean()), abs_tol=0.05)


# ----------------------------------------------------------------------------------------------- no host syncs


class _RecordOps(TorchDispatchMode):
    """Records every aten op; on CUDA the ones in SYNC_OPS read a device value back to the host."""

    SYNC_OPS = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "is_nonzero", "equal", "allclose")

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
        if name.startswith("index") and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices):
            name = "nonzero"  # boolean-mask indexing: data-dependent shape
        self.ops.add(name)
        return func(*args, **(kwargs or {}))

    def syncs(self) -> set[str]:
        return {op for op in self.ops if op.lstrip("_") in {s.lstrip("_") for s in self.SYNC_OPS}}


def test_step_path_has_no_host_syncs():
    flow = torch.randn(4, 2, 64, 128, generator=_gen(0)) * 5
    frames = torch.rand(4, 3, 64, 128, generator=_gen(1))
    cfg = AugmentConfig()
    photometric(frames[:1], cfg, _gen(0))  # warm the per-device constant cache
    with _RecordOps() as rec:
        g = _gen(2)
        boxes = flow_aware_subcrops(flow, SubcropConfig(), g)
        for mode in ("resized_crop", "roi_align"):
            crop_pairs(frames, boxes, 32, paired_index=torch.tensor([2, 3, 0, 1]), mode=mode)
        flow_aware_subcrops(flow, SubcropConfig(clamp="release"), g)
        photometric(frames, cfg, g)
        geo = sample_dense_geometry(4, (64, 128), cfg, generator=g)
        geo.undo(geo.apply(frames))
        geo.undo_affine(geo.undo_flip(frames[:, :, ::8, ::8]))
        geo.valid_mask()
        backward_warp(frames, flow)
        in_bounds_mask(flow) & ~occlusion_mask(flow, -flow)
        resize_flow(flow, (32, 64))
    assert "roi_align" in " ".join(rec.ops) and "bmm" in rec.ops and "grid_sampler_2d" in rec.ops  # ops were seen
    assert not rec.syncs(), rec.syncs()
