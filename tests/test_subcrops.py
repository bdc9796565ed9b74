"""Known-answer tests for poodle.data.subcrops (spec 3.7, decisions 6-9)."""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from poodle.config import AugmentConfig, SubcropConfig
from poodle.data.augment import photometric, sample_dense_geometry
from poodle.data.flow import backward_warp, in_bounds_mask, occlusion_mask, resize_flow
from poodle.data.subcrops import crop_and_resize, crop_pairs, flow_aware_subcrops, grid_shape, pair_sources

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


# ----------------------------------------------------------------------------------------------- cropping


def test_whole_image_box_equals_interpolate():
    img = torch.rand(2, 3, 24, 36, generator=_gen(0))
    boxes = torch.tensor([0.0, 0.0, 36.0, 24.0]).expand(2, 1, 4)
    for size in (16, 50):
        out = crop_and_resize(img, boxes, size)
        ref = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_sub_window_crops_have_known_values():
    img = torch.rand(1, 3, 30, 40, generator=_gen(1))
    boxes = torch.tensor([[[5.0, 3.0, 21.0, 19.0], [7.0, 2.0, 15.0, 10.0]]])  # 16x16 -> 8 (2x), 8x8 -> 8 (1x)
    out = crop_and_resize(img, boxes, 8)
    assert out.shape == (2, 3, 8, 8)
    torch.testing.assert_close(out[0], F.avg_pool2d(img[:, :, 3:19, 5:21], 2)[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], img[0, :, 2:10, 7:15], atol=1e-5, rtol=0)
    # uint8 in, uint8 out; non-square output size
    u8 = (img * 255).round().to(torch.uint8)
    out = crop_and_resize(u8, boxes[:, 1:], (8, 8))
    assert out.dtype == torch.uint8 and torch.equal(out[0], u8[0, :, 2:10, 7:15])


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
        if name.startswith("index") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else ())
        ):
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
        crop_pairs(frames, boxes, 32, paired_index=torch.tensor([2, 3, 0, 1]))
        photometric(frames, cfg, g)
        geo = sample_dense_geometry(4, (64, 128), cfg, generator=g)
        geo.undo(geo.apply(frames))
        geo.undo_affine(geo.undo_flip(frames[:, :, ::8, ::8]))
        geo.valid_mask()
        backward_warp(frames, flow)
        in_bounds_mask(flow) & ~occlusion_mask(flow, -flow)
        resize_flow(flow, (32, 64))
    assert "roi_align" in " ".join(rec.ops) and "grid_sampler_2d" in rec.ops  # the mode did see the ops
    assert not rec.syncs(), rec.syncs()
