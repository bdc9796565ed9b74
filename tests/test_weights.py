"""Published checkpoints in their real layouts, built from poodle's own networks (no downloads): read without
running pickled code, recognised by their keys, converted tensor for tensor, and exported for other tools."""

import argparse
import os
import sys
import types

import pytest
import torch
import torchvision

from poodle.cli import main
from poodle.config import load_config
from poodle.engine.checkpoint import load_checkpoint
from poodle.engine.export import export_backbone
from poodle.evaluation.backbones import load_backbone
from poodle.objective import build_method
from poodle.weights.convert import ConvertError, convert
from poodle.weights.layouts import LayoutError, backbone_state, identify
from poodle.weights.safe_pickle import UnsafeCheckpointError, read_foreign

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- an OmegaConf-like config, pickled under omegaconf's real module names, then removed before reading


def _fake_omegaconf():
    class AnyNode:
        def __init__(self, v):
            self._val, self._metadata = v, {"optional": True}

        def __getstate__(self):
            return {"_val": self._val, "_metadata": self._metadata, "_parent": None}

    class DictConfig:
        def __init__(self, d):
            self._content = {k: DictConfig(v) if isinstance(v, dict) else AnyNode(v) for k, v in d.items()}

        def __getstate__(self):
            return {"_content": self._content, "_metadata": {"ref_type": object}, "_parent": None}

    mods = {n: types.ModuleType(n) for n in ("omegaconf", "omegaconf.dictconfig", "omegaconf.nodes")}
    for cls, mod in ((AnyNode, "omegaconf.nodes"), (DictConfig, "omegaconf.dictconfig")):
        cls.__module__, cls.__qualname__ = mod, cls.__name__
        setattr(mods[mod], cls.__name__, cls)
    return mods, DictConfig


def _save_with_config(obj_builder, path):
    mods, dict_config = _fake_omegaconf()
    sys.modules.update(mods)
    try:
        torch.save(obj_builder(dict_config), path)
    finally:
        for name in mods:
            del sys.modules[name]  # the reader must not need omegaconf


def _rename(state, rules):
    out = {}
    for k, v in state.items():
        for old, new in rules:
            if k.startswith(old):
                out[new + k[len(old) :]] = v
                break
    return out


OURS_TO_RELEASE = [  # our key prefixes -> the release's (baselines-spec 9.1)
    ("target.encoder.", "teacher_backbone."), ("target.decoder.blocks.", "teacher_decoder_blocks."),
    ("target.decoder.laterals.", "teacher_decoder_laterals."), ("target.dense_projector.", "teacher_dense_projector."),
    ("target.pooled_projector.", "teacher_pooled_projector."), ("encoder.", "backbone."),
    ("decoder.blocks.", "decoder_blocks."), ("decoder.laterals.", "decoder_laterals."),
    ("dense_projector.", "dense_projector."), ("dense_predictor.", "dense_predictor."),
    ("pooled_projector.", "pooled_projector."), ("pooled_predictor.", "pooled_predictor."),
]  # fmt: skip


def _networks(config):
    torch.manual_seed(0)
    nets = build_method(load_config(config)).networks
    with torch.no_grad():  # make online and target differ, so a swapped branch cannot pass
        for p in nets.target.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return nets


@pytest.fixture(scope="module")
def poodle_release(tmp_path_factory):
    nets = _networks("synthdrive")
    model = _rename(nets.state_dict(), OURS_TO_RELEASE)
    model["flow_model.fnet.conv1.weight"] = torch.randn(64, 3, 7, 7)  # the release's RAFT rides along
    path = tmp_path_factory.mktemp("release") / "poodle_bdd100k_ep100.pth"
    _save_with_config(lambda DictConfig: {
        "model": model, "optimizer": {"state": {}, "param_groups": []}, "epoch": 100, "scaler": {},
        "args": DictConfig({"data": {"name": "bdd100k"}, "optim": {"lr": 5e-4}}),
    }, path)  # fmt: skip
    return path, nets


def test_the_authors_poodle_checkpoint_is_refused_by_torch_and_read_safely(poodle_release):
    path, nets = poodle_release
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        torch.load(path, weights_only=True)  # what a user meets today
    obj, seen = read_foreign(path)
    assert "omegaconf.dictconfig.DictConfig" in seen and "omegaconf" not in sys.modules
    assert obj["args"] == {"data": {"name": "bdd100k"}, "optim": {"lr": 5e-4}}  # the config as plain data
    assert obj["epoch"] == 100 and identify(obj) == "poodle_release"


def test_release_conversion_round_trips_every_tensor_and_fine_tunes(poodle_release, tmp_path, capsys):
    path, nets = poodle_release
    out = tmp_path / "run"
    assert main(["convert", str(path), str(out)]) == 0
    assert "run folder" in capsys.readouterr().out
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["step"] == 0 and ckpt["optimizer"] is None and ckpt["converted_from"]["epoch"] == 100
    ours = nets.state_dict()
    assert ckpt["networks"].keys() == ours.keys()
    for k, v in ours.items():
        assert torch.equal(ckpt["networks"][k], v), k
    cfg = ckpt["config"]
    assert cfg["model"]["arch"] == "resnet18" and cfg["model"]["proj_hidden_dim"] == 1024
    # read out, export and fine-tune the converted run like any other
    backbone = load_backbone(out)
    assert backbone.decoder is not None and torch.equal(backbone.encoder.conv1.weight, nets.encoder.conv1.weight)
    export_backbone(out, tmp_path / "r18.pth")
    r18 = torchvision.models.resnet18()
    assert set(r18.load_state_dict(torch.load(tmp_path / "r18.pth", weights_only=True), strict=False).missing_keys) \
        == {"fc.weight", "fc.bias"}  # fmt: skip
    from poodle.engine.pair_sources import build_pair_source
    from poodle.engine.train import pretrain

    tune = load_config("synthdrive", ["optim.batch_size=4", "data.workers=0", "subcrops.size=32"])
    source, flow = build_pair_source(tune)
    result = pretrain(tune, out, source, flow, stop_step=1)
    assert result["step"] == 1 and "fine-tuning the weights converted from" in capsys.readouterr().out


def test_eval_reads_the_release_file_directly_online_or_ema(poodle_release):
    path, nets = poodle_release
    online = load_backbone(path)
    assert torch.equal(online.encoder.layer4[0].conv1.weight, nets.encoder.layer4[0].conv1.weight)
    assert online.decoder is not None
    ema = load_backbone(f"ema:{path}")
    assert torch.equal(ema.encoder.layer4[0].conv1.weight, nets.target["encoder"].layer4[0].conv1.weight)


def test_the_release_flowe_checkpoint_becomes_a_flowe_run(tmp_path):
    nets = _networks("flowe_synthdrive")
    rules = [("target.encoder.", "target_encoder."), ("target.dense_projector.", "target_projector."),
             ("encoder.", "encoder."), ("dense_projector.", "projector."),
             ("dense_predictor.", "predictor.")]  # fmt: skip
    model = _rename(nets.state_dict(), rules)
    model["flownet.fnet.conv1.weight"] = torch.zeros(1)
    path = tmp_path / "flowe.pth"
    _save_with_config(lambda DictConfig: {"model": model, "epoch": 100, "args": DictConfig({"x": 1})}, path)
    info = convert(path, tmp_path / "run")
    assert info["layout"] == "flowe_release" and info["dropped_prefixes"] == ["flownet"]
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["config"]["model"]["dilated"] and not ckpt["config"]["objective"]["pooled"]
    for k, v in nets.state_dict().items():
        assert torch.equal(ckpt["networks"][k], v), k


def _r18(seed):
    torch.manual_seed(seed)
    return {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}


def test_baseline_layouts_map_to_their_backbones(tmp_path):
    online, ema = _r18(1), _r18(2)
    head = {"mlp.0.weight": torch.zeros(4, 512)}
    cases = {
        "dino_full": ({"student": {**{f"module.backbone.{k}": v for k, v in online.items()},
                                    **{f"module.head.{k}": v for k, v in head.items()}},
                       "teacher": {f"backbone.{k}": v for k, v in ema.items()},
                       "args": argparse.Namespace(arch="resnet50", lr=0.03), "epoch": 100}, ema),
        "pixpro": ({"model": {**{f"module.encoder.{k}": v for k, v in online.items()},
                              **{f"module.encoder_k.{k}": v for k, v in ema.items()},
                              "module.projector.0.weight": torch.zeros(2, 2)},
                    "opt": argparse.Namespace(pixpro_p=2.0)}, online),
        "moco": ({"state_dict": {**{f"encoder_q.0.{k}": v for k, v in online.items()},
                                 **{f"encoder_k.0.{k}": v for k, v in ema.items()},
                                 "queue": torch.zeros(128, 8)}}, online),
        "torchvision": ({"state_dict": {f"backbone.{k}": v for k, v in online.items()}, "author": "DenseCL"}, online),
    }  # fmt: skip
    for layout, (obj, expected) in cases.items():
        path = tmp_path / f"{layout}.pth"
        torch.save(obj, path)
        data, _ = read_foreign(path)
        assert identify(data) == layout
        out = tmp_path / f"{layout}_r18.pth"
        info = convert(path, out)
        assert info["arch"] == "resnet18"
        got = torch.load(out, weights_only=True)
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got), layout
        assert torch.equal(load_backbone(path).encoder.conv1.weight, expected["conv1.weight"])  # eval reads it too
    other = backbone_state(read_foreign(tmp_path / "dino_full.pth")[0], "dino_full", "online")
    assert other == (other[0], "online") and torch.equal(other[0]["conv1.weight"], online["conv1.weight"])


def test_unknown_layouts_and_code_payloads_are_refused_and_nothing_runs(tmp_path, capsys):
    torch.save({"weights": {"foo": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(ConvertError, match="none of the known layouts .*poodle_release.*it holds: weights"):
        convert(tmp_path / "other.pth", tmp_path / "x.pth")
    with pytest.raises(LayoutError):
        identify({"weights": 1})
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    class Sneaky:  # an unknown callable is never called either: it becomes inert data
        def __reduce__(self):
            return (argparse.ArgumentParser, ("never-built",))

    torch.save({"model": {"w": torch.zeros(1)}, "x": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(UnsafeCheckpointError, match="posix.system|nt.system"):
        read_foreign(tmp_path / "evil.pth")
    assert main(["convert", str(tmp_path / "evil.pth"), str(tmp_path / "e.pth")]) == 2
    err = capsys.readouterr().err
    assert "runs code" in err and "weights_only" not in err and not marker.exists()
    assert main(["eval", "linear", "--dataset", "synthdrive", "--data", str(tmp_path), "--weights",
                 str(tmp_path / "evil.pth"), "--out", str(tmp_path / "ev")]) == 2  # fmt: skip
    assert not marker.exists()
    torch.save({"model": {"w": torch.zeros(1)}, "x": Sneaky()}, tmp_path / "sneaky.pth")
    obj, seen = read_foreign(tmp_path / "sneaky.pth")
    assert obj["x"] == {"__class__": "argparse.ArgumentParser", "args": ["never-built"]}


def test_exports_for_timm_and_mmseg(tmp_path):
    from test_engine import _train

    _train(tmp_path / "run", 1)
    tv = export_backbone(tmp_path / "run", tmp_path / "tv.pth")
    timm = export_backbone(tmp_path / "run", tmp_path / "timm.pth", fmt="timm")
    mm = export_backbone(tmp_path / "run", tmp_path / "mm.pth", fmt="mmseg", branch="ema")
    a, b = torch.load(tmp_path / "tv.pth", weights_only=True), torch.load(tmp_path / "timm.pth", weights_only=True)
    assert a.keys() == b.keys() and tv["tensors"] == timm["tensors"]
    m = torch.load(tmp_path / "mm.pth", weights_only=True)
    assert set(m) == {"state_dict", "meta"} and all(k.startswith("backbone.") for k in m["state_dict"])
    assert m["meta"]["poodle"]["branch"] == "ema" and mm["format"] == "mmseg"
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert torch.equal(m["state_dict"]["backbone.conv1.weight"], ckpt["networks"]["target.encoder.conv1.weight"])
