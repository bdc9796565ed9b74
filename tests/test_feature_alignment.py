"""Flow alignment (`poodle.evaluation.feature_alignment`, `poodle analyze alignment`): known translations, exact
SynthDrive flow, backbones and the dense head."""

import json
from pathlib import Path

import pytest
import torch

from poodle.cli import main
from poodle.config import load_config
from poodle.data.augment import normalize
from poodle.data.shards import prepare_shards
from poodle.data.synthdrive.dataset import generate_dataset
from poodle.evaluation.feature_alignment import (
    alignment_from_features,
    dense_head_alignment,
    feature_alignment,
    patch_features,
    shard_pairs,
)
from poodle.model.networks import PooDLeNetworks


def test_known_translation():
    # Features = a smooth random field; frame b is frame a moved right by 3 px, so flow_ab = +3 everywhere.
    torch.manual_seed(0)
    base = torch.nn.functional.interpolate(torch.randn(2, 8, 6, 10), size=(24, 40), mode="bilinear")
    feat_b = torch.roll(base, shifts=3, dims=-1)
    flow_ab = torch.zeros(2, 2, 24, 40)
    flow_ab[:, 0] = 3.0
    r = alignment_from_features(base, feat_b, flow_ab, -flow_ab)
    assert r.warped == pytest.approx(1.0, abs=1e-5)  # exact: integer shift, valid pixels only
    assert r.warped_moving == pytest.approx(1.0, abs=1e-5) and r.moving_fraction == 1.0
    assert r.same_place < r.warped - 0.05 and r.same_place_moving == pytest.approx(r.same_place)
    assert r.shuffled < r.same_place
    assert r.valid_fraction == pytest.approx(37 / 40)  # the 3 rightmost columns leave the frame
    assert r.mean_motion_px == pytest.approx(3.0)
    # The wrong flow direction is caught: warping with -flow lands on the wrong content.
    wrong = alignment_from_features(base, feat_b, -flow_ab, flow_ab)
    assert wrong.warped < r.same_place


def test_static_scene_and_normalisation():
    frames = torch.randint(0, 256, (2, 3, 16, 32), dtype=torch.uint8)
    flow = torch.zeros(2, 2, 16, 32)
    seen = []

    def fn(x):
        seen.append(x)
        return x[:, :, ::2, ::2]

    r = feature_alignment(fn, frames, frames, flow, flow)
    assert r.warped == pytest.approx(1.0, abs=1e-5) and r.same_place == pytest.approx(1.0, abs=1e-5)
    assert r.moving_fraction == 0.0 and r.warped_moving != r.warped_moving  # NaN: nothing moves
    assert seen[0].dtype == torch.float32 and seen[0].abs().max() < 3.0  # ImageNet-normalised
    assert patch_features(seen[0], 5).shape == (2, 75, 16, 32)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "sd"
    generate_dataset(root, preset="small", train_videos=2, val_videos=0, train_images=1, val_images=0, seconds=1.0,
                     flow_pairs=0, progress=False)  # fmt: skip
    out = tmp_path_factory.mktemp("gt") / "shards"
    prepare_shards(load_config("synthdrive", [f"data.root={root}", "data.workers=0"]), out, 8, progress=False)
    return out


def test_exact_flow_aligns_synthdrive_pixels(shards):
    batch = shard_pairs(shards, 8)
    assert batch["frame_a"].shape[0] == 8
    inputs = (batch["frame_a"], batch["frame_b"], batch["flow_ab"], batch["flow_ba"])
    r = feature_alignment(patch_features, *inputs)
    # Exact flow: moved content matches far better than the same place (the check `poodle analyze` prints).
    assert r.warped > r.same_place + 0.02 and r.warped_moving > r.same_place_moving + 0.05
    assert r.warped > 0.8 and r.shuffled < 0.3


def test_dense_head_alignment_runs_in_eval_and_restores_mode(shards):
    cfg = load_config("synthdrive", ["model.proj_hidden_dim=64", "model.proj_out_dim=32"])
    torch.manual_seed(0)
    networks = PooDLeNetworks(cfg.model, dense=True, pooled=False).train()
    batch = shard_pairs(shards, 2)
    flows = (batch["flow_ab"], batch["flow_ba"])
    r = dense_head_alignment(networks, batch["frame_a"], batch["frame_b"], *flows)
    assert networks.training  # restored
    # The same numbers by hand: eval-mode online prediction of a vs target projection of b.
    networks.eval()
    with torch.no_grad():
        a, b = (normalize(batch[k].float() / 255.0) for k in ("frame_a", "frame_b"))
        expected = alignment_from_features(networks.online_dense(a), networks.target_dense(b), *flows)
    assert r.to_dict() == pytest.approx(expected.to_dict(), nan_ok=True)


def test_cli_alignment(shards, tmp_path, capsys):
    out = tmp_path / "align"
    args = ["analyze", "alignment", "--shards", str(shards), "--pairs", "4", "--weights", "random", "--arch",
            "resnet18", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| pixels (RGB) |" in printed and "| 5x5 patches |" in printed and "resnet18 layer4 features" in printed
    rows = json.loads((out / "alignment.json").read_text())["rows"]
    assert rows["pixels (RGB)"]["pairs"] == 4
    assert main(["analyze", "alignment", "--shards", str(tmp_path / "nothing")]) == 2
    assert "shards folder not found" in capsys.readouterr().err
    assert main(["analyze", "subcrops"]) == 2  # subcrops needs --dataset and --data
