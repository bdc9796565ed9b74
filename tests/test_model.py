"""Encoder, SDM, heads and EMA target (spec 2.2-2.5, decisions 1-2, our reading of ambiguity 20).

Small inputs and resnet18 with narrow heads everywhere except where the ResNet-50 widths are the point.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from poodle.config import ModelConfig
from poodle.model import ConvMLP, PooDLeNetworks, ResNetEncoder, SpatialDecoder, clean_state_dict

SMALL_HEADS = {"proj_hidden_dim": 64, "proj_out_dim": 32}
# (dilated, top_down, lateral) of the Table 4 rows:
# full SDM (5-7), top-down only (3), lateral only (4), none (1-2)
VARIANTS = {
    "full": (False, True, True),
    "top_down_only": (False, True, False),
    "lateral_only": (True, False, True),
    "none": (True, False, False),
}


def _cfg(arch: str = "resnet18", variant: str = "full", **kw) -> ModelConfig:
    dilated, top_down, lateral = VARIANTS[variant]
    kw = {**SMALL_HEADS, **kw}
    cfg = ModelConfig(arch=arch, dilated=dilated, decoder_top_down=top_down, decoder_lateral=lateral, **kw)
    cfg.validate()
    return cfg


def _nparams(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------------------------- encoder


@pytest.mark.parametrize("dilated", [False, True])
def test_resnet18_encoder_strides_and_channels(dilated):
    enc = ResNetEncoder("resnet18", dilated=dilated)
    assert enc.channels == (128, 256, 512)
    s3, s4 = (8, 8) if dilated else (16, 32)
    for h, w in [(64, 128), (96, 160), (128, 256)]:
        feats = enc(torch.randn(1, 3, h, w))
        assert feats["layer2"].shape == (1, 128, h // 8, w // 8)
        assert feats["layer3"].shape == (1, 256, h // s3, w // s3)
        assert feats["layer4"].shape == (1, 512, h // s4, w // s4)
    assert enc.forward_pooled(torch.randn(3, 3, 32, 32)).shape == (3, 512)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_dilated_encoder_is_the_a_trous_version_of_the_strided_one(arch):
    """Same weights, eval-mode BN: the dilated stride-8 maps sampled every 2/4 pixels are the strided maps.

    This holds exactly only if every conv after a removed stride is dilated by the right factor, so it pins
    the hand-made BasicBlock conversion to torchvision's `replace_stride_with_dilation` rule.
    """
    torch.manual_seed(0)
    strided, dilated = ResNetEncoder(arch).eval(), ResNetEncoder(arch, dilated=True).eval()
    dilated.load_state_dict(strided.state_dict())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = strided(x), dilated(x)
    c2, c3, c4 = strided.channels
    expected = (512, 1024, 2048) if arch == "resnet50" else (128, 256, 512)
    assert dilated.channels == strided.channels == expected
    assert [f.shape for f in b.values()] == [(1, c2, 8, 12), (1, c3, 8, 12), (1, c4, 8, 12)]
    torch.testing.assert_close(b["layer2"], a["layer2"])
    # fp32 convolutions sum in a different order when dilated (and per thread count): ~1e-4 apart on ResNet-50's
    # deep layers; a wrong dilation factor is off by O(1).
    torch.testing.assert_close(b["layer3"][..., ::2, ::2], a["layer3"], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(b["layer4"][..., ::4, ::4], a["layer4"], rtol=1e-3, atol=1e-3)


def test_backbone_state_dict_loads_into_torchvision_resnet50():
    nets = PooDLeNetworks(_cfg("resnet50"), dense=True, pooled=True)
    sd = nets.backbone_state_dict()
    tv = torchvision.models.resnet50()
    result = tv.load_state_dict(sd, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    assert result.unexpected_keys == []
    for key, value in sd.items():
        assert torch.equal(tv.state_dict()[key], value), key
    assert set(nets.encoder.state_dict()) == set(tv.state_dict()) - {"fc.weight", "fc.bias"}


def _torchvision_layer4(tv: torchvision.models.ResNet, x: torch.Tensor) -> torch.Tensor:
    x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    return tv.layer4(tv.layer3(tv.layer2(tv.layer1(x))))


@pytest.mark.parametrize("prefix", ["", "module."])
def test_imagenet_init_from_local_torchvision_file(tmp_path, prefix):
    torch.manual_seed(1)
    tv = torchvision.models.resnet18().eval()
    with torch.no_grad():  # non-default BN statistics, so a buffer that failed to load would show
        for m in tv.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "r18.pth"
    torch.save({prefix + k: v for k, v in tv.state_dict().items()}, path)
    enc = ResNetEncoder("resnet18", init=f"imagenet:{path}").eval()
    x = torch.randn(2, 3, 64, 128)
    with torch.no_grad():
        assert torch.equal(enc(x)["layer4"], _torchvision_layer4(tv, x))
    nets = PooDLeNetworks(_cfg(init=f"imagenet:{path}"))
    assert torch.equal(nets.encoder.conv1.weight, tv.conv1.weight)
    assert torch.equal(nets.target["encoder"].conv1.weight, tv.conv1.weight)  # the target copies the init


def test_imagenet_init_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        ResNetEncoder("resnet18", init=f"imagenet:{tmp_path / 'missing.pth'}")
    path = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(ValueError, match="unexpected keys .*layer1.2"):
        ResNetEncoder("resnet18", init=f"imagenet:{path}")
    with pytest.raises(ValueError, match="imagenet:PATH"):
        ResNetEncoder("resnet18", init="imagenet-v2")


def test_clean_state_dict_strips_stacked_prefixes_and_unwraps():
    w = torch.zeros(1)
    sd = clean_state_dict({"state_dict": {"module.backbone.conv1.weight": w, "encoder.fc.bias": w}})
    assert set(sd) == {"conv1.weight", "fc.bias"}


# ----------------------------------------------------------------------------------------------- decoder


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_resnet18_networks_dense_output_is_stride8_for_every_variant(variant):
    nets = PooDLeNetworks(_cfg(variant=variant), dense=True, pooled=False)
    for b, h, w in [(2, 64, 128), (1, 96, 160), (1, 128, 256)]:
        x = torch.randn(b, 3, h, w)
        assert nets.decoder(nets.encoder(x)).shape == (b, 512, h // 8, w // 8)
        assert nets.online_dense(x).shape == (b, 32, h // 8, w // 8)
        assert nets.target_dense(x).shape == (b, 32, h // 8, w // 8)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_resnet50_networks_every_variant(variant):
    nets = PooDLeNetworks(_cfg("resnet50", variant))
    x = torch.randn(1, 3, 64, 128)
    assert nets.online_dense(x).shape == (1, 32, 8, 16)
    assert nets.online_pooled(torch.randn(4, 3, 32, 32)).shape == (4, 32)


def test_variant_wiring():
    c = (128, 256, 512)
    feats = {"layer2": torch.randn(1, 128, 4, 6), "layer3": torch.randn(1, 256, 4, 6)}
    feats["layer4"] = torch.randn(1, 512, 4, 6)
    none = SpatialDecoder(c, encoder_stride=8, top_down=False, lateral=False)
    assert _nparams(none) == 0 and torch.equal(none(feats), feats["layer4"])  # FlowE: identity on layer4
    lat = SpatialDecoder(c, encoder_stride=8, top_down=False, lateral=True)
    expected = feats["layer4"] + lat.laterals[0](feats["layer3"]) + lat.laterals[1](feats["layer2"])
    torch.testing.assert_close(lat(feats), expected)
    td = SpatialDecoder(c, top_down=True, lateral=False)
    assert len(td.blocks) == 2 and len(td.laterals) == 0


def test_bottleneck_order_switch():
    torch.manual_seed(0)
    c = (128, 256, 512)
    feats = {"layer2": torch.randn(1, 128, 8, 8), "layer3": torch.randn(1, 256, 4, 4)}
    feats["layer4"] = torch.randn(1, 512, 2, 2)
    code, paper = SpatialDecoder(c, bottleneck_first=True), SpatialDecoder(c, bottleneck_first=False)
    paper.load_state_dict(code.state_dict())

    def up(z: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(z, scale_factor=2.0, mode="bilinear", align_corners=False)

    z = up(code.blocks[0](feats["layer4"])) + code.laterals[0](feats["layer3"])
    z = up(code.blocks[1](z)) + code.laterals[1](feats["layer2"])
    torch.testing.assert_close(code(feats), z)
    z = paper.blocks[0](up(feats["layer4"])) + paper.laterals[0](feats["layer3"])
    z = paper.blocks[1](up(z)) + paper.laterals[1](feats["layer2"])
    torch.testing.assert_close(paper(feats), z)


def test_impossible_combinations_raise_clear_errors():
    with pytest.raises(ValueError, match="decoder_top_down=True needs the non-dilated"):
        PooDLeNetworks(ModelConfig(arch="resnet18", dilated=True, **SMALL_HEADS))
    with pytest.raises(ValueError, match="decoder_top_down=False needs the dilated"):
        PooDLeNetworks(ModelConfig(arch="resnet18", decoder_top_down=False, **SMALL_HEADS))
    nets = PooDLeNetworks(_cfg())
    with pytest.raises(ValueError, match="multiples of 32"):
        nets.online_dense(torch.randn(1, 3, 80, 128))
    with pytest.raises(ValueError, match="divisible"):
        SpatialDecoder((128, 256, 512), reduction=7)


def test_sdm_structure_and_parameter_count_resnet50():
    sdm = SpatialDecoder((512, 1024, 2048), reduction=8)
    for block in sdm.blocks:
        assert block.downsample is None
        convs = [block.conv1, block.conv2, block.conv3]
        assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
            (2048, 256, (1, 1)),
            (256, 256, (3, 3)),
            (256, 2048, (1, 1)),
        ]
    assert [(m.in_channels, m.out_channels, m.bias is not None) for m in sdm.laterals] == [
        (1024, 2048, True),
        (512, 2048, True),
    ]
    bottleneck = 2048 * 256 + 256 * 256 * 9 + 256 * 2048 + 2 * (256 + 256 + 2048)  # 3 convs + 3 BN (w, b)
    laterals = (1024 * 2048 + 2048) + (512 * 2048 + 2048)
    assert _nparams(sdm) == 2 * bottleneck + laterals == 6_436_864
    r18 = SpatialDecoder((128, 256, 512))
    assert (r18.blocks[0].conv1.out_channels, r18.blocks[0].conv3.out_channels) == (64, 512)


# ----------------------------------------------------------------------------------------------- heads


def test_conv_mlp_on_pooled_vectors_is_linear_bn_relu_linear():
    torch.manual_seed(0)
    mlp = ConvMLP(16, 32, 8)
    linear = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 8))
    linear[0].weight.data = mlp[0].weight.data.flatten(1)
    linear[0].bias.data = mlp[0].bias.data
    linear[3].weight.data = mlp[3].weight.data.flatten(1)
    linear[3].bias.data = mlp[3].bias.data
    x = torch.randn(12, 16)
    torch.testing.assert_close(mlp(x), linear(x))  # BN statistics over all 12 vectors in both
    assert mlp(torch.randn(2, 16, 3, 5)).shape == (2, 8, 3, 5)
    assert [type(m) for m in mlp] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d]


def test_head_bias_switch_drops_the_first_conv_bias_only():
    nets = PooDLeNetworks(_cfg(variant="none", head_bias=False))
    heads = ("dense_projector", "dense_predictor", "pooled_projector", "pooled_predictor")
    for name in heads:
        mlp = getattr(nets, name)
        assert mlp[0].bias is None and mlp[3].bias is not None, name
    assert nets.target["dense_projector"][0].bias is None  # the EMA copy has the same structure
    with_bias = PooDLeNetworks(_cfg(variant="none"))
    assert all(getattr(with_bias, name)[0].bias is not None for name in heads)
    hidden = SMALL_HEADS["proj_hidden_dim"]
    assert _nparams(with_bias) - _nparams(nets) == (4 + 2) * hidden  # 4 online heads + the 2 target projectors
    # The BN right after the conv removes a constant bias: in train mode the output does not depend on it.
    torch.manual_seed(0)
    biased = ConvMLP(16, 32, 8)
    plain = ConvMLP(16, 32, 8, bias=False)
    plain.load_state_dict({k: v for k, v in biased.state_dict().items() if k != "0.bias"})
    x = torch.randn(4, 16, 3, 5)
    torch.testing.assert_close(plain(x), biased(x), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------- networks


def test_gradients_reach_online_modules_but_not_target():
    torch.manual_seed(0)
    nets = PooDLeNetworks(_cfg())
    x = torch.randn(2, 3, 64, 128)
    crops = torch.randn(6, 3, 32, 32)
    loss = nets.online_dense(x).square().mean() + nets.online_pooled(crops).square().mean()
    loss = loss + nets.target_dense(x).sum() + nets.target_pooled(crops).sum()  # constants: no graph
    loss.backward()
    heads = ("dense_projector", "dense_predictor", "pooled_projector", "pooled_predictor")
    for name in ("encoder", "decoder", *heads):
        for pname, p in getattr(nets, name).named_parameters():
            assert p.grad is not None, f"{name}.{pname}"
        assert any(p.grad.abs().sum() > 0 for p in getattr(nets, name).parameters()), name
    for pname, p in nets.target.named_parameters():
        assert not p.requires_grad and p.grad is None, pname
    assert set(nets.target) == {"encoder", "decoder", "dense_projector", "pooled_projector"}
    online = list(nets.online_parameters())
    assert len(online) == sum(p.requires_grad for p in nets.parameters())
    assert {id(p) for p in online} == {id(p) for p in nets.parameters() if p.requires_grad}


def _perturb_online(nets: PooDLeNetworks) -> None:
    with torch.no_grad():
        for name in nets.target:
            module = getattr(nets, name)
            for p in module.parameters():
                p.add_(torch.randn_like(p))
            for b in module.buffers():
                b.add_(torch.ones_like(b) if b.dtype.is_floating_point else 3)


def test_ema_update_is_exact_and_copies_buffers():
    torch.manual_seed(0)
    nets = PooDLeNetworks(_cfg())
    for name, module in nets.target.items():  # target starts as an exact copy
        for (k, a), b in zip(module.state_dict().items(), getattr(nets, name).state_dict().values()):
            assert torch.equal(a, b), f"{name}.{k}"
    _perturb_online(nets)
    old = {k: v.clone() for k, v in nets.target.named_parameters()}
    nets.update_target(1.0)  # tau = 1: parameters unchanged
    for k, v in nets.target.named_parameters():
        assert torch.equal(v, old[k]), k
    tau = 0.9
    nets.update_target(tau)
    for name, module in nets.target.items():
        online = dict(getattr(nets, name).named_parameters())
        for k, v in module.named_parameters():
            expected = (tau * old[f"{name}.{k}"].double() + (1 - tau) * online[k].double()).float()
            torch.testing.assert_close(v, expected, rtol=2e-7, atol=2e-7)  # a few ulp: fp32 rounding only
            assert not torch.equal(v, old[f"{name}.{k}"]), k
        online_bufs = dict(getattr(nets, name).named_buffers())
        for k, b in module.named_buffers():
            assert torch.equal(b, online_bufs[k]), f"{name}.{k}"
    nets.update_target(0.0)  # tau = 0: a plain copy
    for name, module in nets.target.items():
        for (k, a), b in zip(module.state_dict().items(), getattr(nets, name).state_dict().values()):
            assert torch.equal(a, b), f"{name}.{k}"


def test_ema_cache_follows_dtype_moves():
    nets = PooDLeNetworks(_cfg(variant="none"), dense=True, pooled=False)
    nets.update_target(0.5)  # builds the cached lists
    nets.to(torch.float64)  # replaces buffer tensors: the cache must be rebuilt
    _perturb_online(nets)
    nets.update_target(0.5)
    assert torch.equal(nets.target["encoder"].bn1.running_mean, nets.encoder.bn1.running_mean)
    assert nets.target["encoder"].conv1.weight.dtype == torch.float64
    with pytest.raises(ValueError, match="momentum"):
        nets.update_target(1.5)


def test_target_stays_in_train_mode():
    nets = PooDLeNetworks(_cfg())
    nets.eval()
    assert not nets.encoder.training and not nets.dense_predictor.training
    assert all(m.training for m in nets.target.modules())
    nets.train()
    assert all(m.training for m in nets.modules())


def test_disabled_branches():
    pooled_only = PooDLeNetworks(_cfg(), dense=False, pooled=True)
    assert pooled_only.decoder is None and pooled_only.dense_projector is None
    assert set(pooled_only.target) == {"encoder", "pooled_projector"}
    assert pooled_only.decoder_state_dict() == {}
    with pytest.raises(RuntimeError, match="dense branch is disabled"):
        pooled_only.online_dense(torch.randn(1, 3, 64, 64))
    dense_only = PooDLeNetworks(_cfg(variant="none"), dense=True, pooled=False)
    assert dense_only.pooled_projector is None
    assert set(dense_only.target) == {"encoder", "decoder", "dense_projector"}
    with pytest.raises(RuntimeError, match="pooled branch is disabled"):
        dense_only.target_pooled(torch.randn(2, 3, 32, 32))
    full = PooDLeNetworks(_cfg())
    assert set(full.decoder_state_dict()) == set(full.decoder.state_dict())
    with pytest.raises(ValueError, match="at least one"):
        PooDLeNetworks(_cfg(), dense=False, pooled=False)
