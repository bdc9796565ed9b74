"""Known answers for both orders of the dense target transform (decision 3) with the horizontal flip on.

Frame b is frame a moved 3 px right, the flow a -> b is +3 px everywhere, and the "network" is the identity, so
the target brought back into frame a's pixels must equal frame a wherever the mask is on, whichever order undoes
the target's flip/affine and the warp. The release's order unflips before the warp (the flow lives in unflipped
pixels); undoing the flip after the warp would move every feature the wrong way.
"""

import pytest
import torch
import torch.nn.functional as F

from poodle.data.augment import DenseGeometry
from poodle.objective.dense import dense_loss, dense_target_and_mask

H, W, SHIFT = 16, 32, 3


def _scene(b=2):
    g = torch.Generator().manual_seed(0)
    a = F.interpolate(torch.randn(b, 4, H // 4, W // 4, generator=g), size=(H, W), mode="bilinear")
    moved = torch.zeros_like(a)
    moved[..., SHIFT:] = a[..., :-SHIFT]  # b(x + 3) = a(x)
    flow = torch.zeros(b, 2, H, W)
    flow[:, 0] = SHIFT
    return a, moved, flow, -flow


def _geometry(b, flip: bool) -> DenseGeometry:
    eye = torch.eye(2).expand(b, 2, 2).clone()
    return DenseGeometry(eye, torch.full((b,), flip), (H, W), use_affine=False, use_flip=flip)


@pytest.mark.parametrize("order", ["unaffine_then_warp", "warp_then_unaffine"])
@pytest.mark.parametrize("flip", [False, True])
def test_target_order_known_answer_translation(order, flip):
    a, moved, flow, flow_back = _scene()
    target_geo, online_geo = _geometry(2, flip), _geometry(2, False)
    target_map = target_geo.apply(moved)  # the identity network sees the transformed paired frame
    target, mask = dense_target_and_mask(target_map, flow, flow_back, target_geo, online_geo, order=order)
    assert mask[..., : W - SHIFT].all() and not mask[..., W - SHIFT :].any()  # the flow leaves on the right
    loss = dense_loss(F.normalize(a, dim=1), target, mask)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_unflipping_after_the_warp_is_wrong():
    """The previous release-order code (warp, then undo flip + affine) fails the same known answer."""
    a, moved, flow, _ = _scene()
    geo = _geometry(2, True)
    from poodle.data.flow import backward_warp

    wrong = F.normalize(geo.undo(backward_warp(geo.apply(moved), flow)), dim=1)
    mask = torch.zeros(2, 1, H, W)
    mask[..., SHIFT : W - SHIFT] = 1.0
    assert dense_loss(F.normalize(a, dim=1), wrong, mask).item() > 0.1
