"""Backbone loading for the readouts: poodle runs/checkpoints, torchvision state dicts, imagenet:PATH, random."""

import pytest
import torch
import torchvision

from poodle.config import load_config
from poodle.engine.pair_sources import build_pair_source
from poodle.engine.train import pretrain
from poodle.evaluation.backbones import BackboneError, infer_arch, load_backbone

TINY = ["model.proj_hidden_dim=64", "model.proj_out_dim=32", "subcrops.size=32", "optim.batch_size=4",
        "data.workers=0", "run.ckpt_every=1"]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = load_config("synthdrive", TINY)
    source, flow = build_pair_source(cfg)
    pretrain(cfg, out, source, flow, stop_step=1, resume=False)
    return out


def test_poodle_run_keeps_online_encoder_and_sdm(run_dir):
    from poodle.engine.export import load_networks

    bb = load_backbone(run_dir)
    assert bb.source == "poodle" and bb.decoder is not None and bb.frozen and not bb.training
    assert not any(p.requires_grad for p in bb.parameters())
    nets, _ = load_networks(run_dir)
    assert torch.equal(bb.encoder.conv1.weight, nets.encoder.conv1.weight)  # online, not target
    out = bb(torch.randn(1, 3, 64, 128))
    assert out["sdm"].shape == (1, 512, 8, 16) and out["layer1"].shape == (1, 64, 16, 32)
    assert bb.resolve_features("auto") == "sdm" and bb.readout_channels("auto") == 512
    bb.train()
    assert not bb.training  # frozen: BN keeps its running statistics
    # Asking for a dilated encoder re-strides the same weights and drops the SDM (built for stride 32).
    dil = load_backbone(run_dir / "last.pt", dilated=True)
    assert dil.decoder is None and dil.dilated and dil.resolve_features("auto") == "layer4"
    assert dil(torch.randn(1, 3, 64, 128))["layer4"].shape == (1, 512, 8, 16)
    with pytest.raises(BackboneError, match="resnet50"):
        load_backbone(run_dir, arch="resnet50")


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_torchvision_state_dict_arch_is_inferred(tmp_path, arch):
    net = getattr(torchvision.models, arch)()
    path = tmp_path / f"{arch}.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    bb = load_backbone(path, dilated=True)
    assert bb.arch == arch and bb.source == "state_dict" and bb.strides["layer4"] == 8
    assert torch.equal(bb.encoder.layer4[0].conv1.weight, net.layer4[0].conv1.weight)
    bb2 = load_backbone(f"imagenet:{path}")
    assert bb2.source == "imagenet" and bb2.strides["layer4"] == 32


def test_dilated_features_match_undilated_at_layer2(tmp_path):
    net = torchvision.models.resnet18()
    path = tmp_path / "r18.pth"
    torch.save(net.state_dict(), path)
    x = torch.randn(1, 3, 64, 64)
    a, b = load_backbone(path)(x), load_backbone(path, dilated=True)(x)
    assert torch.allclose(a["layer2"], b["layer2"])  # same weights; only layer3/4 change stride


def test_clear_errors(tmp_path):
    with pytest.raises(BackboneError, match="not found"):
        load_backbone(tmp_path / "missing.pth")
    with pytest.raises(BackboneError, match="needs --arch"):
        load_backbone("random")
    r18 = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), r18)
    with pytest.raises(BackboneError, match="holds resnet18 weights but --arch resnet50"):
        load_backbone(r18, arch="resnet50")
    other = tmp_path / "vgg.pth"
    torch.save(torchvision.models.vgg11().features.state_dict(), other)
    with pytest.raises(BackboneError, match="expected a torchvision ResNet"):
        load_backbone(other)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(BackboneError, match="not a PyTorch checkpoint"):
        load_backbone(junk)
    assert infer_arch(torchvision.models.resnet34().state_dict()) == "resnet34"


def test_random_backbone():
    torch.manual_seed(0)
    bb = load_backbone("random", arch="resnet18", dilated=True)
    assert bb.source == "random" and bb.decoder is None
    assert bb(torch.randn(2, 3, 32, 64))["layer4"].shape == (2, 512, 4, 8)
