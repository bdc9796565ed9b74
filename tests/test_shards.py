"""Prepared shards (`poodle prepare`): write, read back exactly, train from them, clear errors, CLI end to end."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from poodle.cli import main
from poodle.config import load_config
from poodle.data.optical_flow import DISFlow
from poodle.data.pairs import build_pair_dataset
from poodle.data.shards import FLOW_LIMIT, ShardError, ShardPairs, _decode_flow, _encode_flow, prepare_shards
from poodle.data.synthdrive.dataset import generate_dataset
from poodle.data.synthdrive.pairs import SynthDrivePairs
from poodle.engine.pair_sources import build_pair_source
from poodle.engine.train import pretrain

TINY = [
    "model.proj_hidden_dim=64",
    "model.proj_out_dim=32",
    "subcrops.size=32",
    "optim.batch_size=2",  # one group of repeat=2 pairs per step
    "data.workers=0",
    "run.log_every=1",
    "run.ckpt_every=1",
]
FP16 = {"rtol": 2**-11, "atol": 1e-6}  # float16 rounding: half an ulp is 2**-11 of the value


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "sd"
    generate_dataset(
        root, preset="small", train_videos=2, val_videos=0, train_images=1, val_images=0, seconds=1.0,
        flow_pairs=0, progress=False,
    )  # fmt: skip
    return root


@pytest.fixture(scope="module")
def gt_shards(synth, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gt") / "shards"
    cfg = load_config("synthdrive", [f"data.root={synth}", "data.workers=0"])
    report = prepare_shards(cfg, out, 7, progress=False, shard_size_mb=0.1)  # 7 -> 8 pairs (groups of repeat=2)
    assert report["pairs"] == 8 and report["items"] == 4 and report["shards"] > 1
    return out


def _members(tar_path: Path) -> list[str]:
    with tarfile.open(tar_path) as tar:
        return tar.getnames()


def test_gt_shards_hold_the_renderers_pairs_exactly(synth, gt_shards):
    cfg = load_config("synthdrive", [f"data.root={synth}"])
    ds = ShardPairs.from_config(load_config("synthdrive", ["data.dataset=shards", f"data.root={gt_shards}"]).data)
    ref = SynthDrivePairs(cfg.data, seed=cfg.run.seed)
    assert len(ds) == 4 and ds.num_pairs == 8 and ds.flow_source == "gt"
    for key in range(4):
        got, want = ds[key], ref[key]
        assert got["frame_a"].dtype == torch.uint8 and got["flow_ab"].dtype == torch.float32
        assert got["frame_a"].shape == (2, 3, 64, 128) and got["flow_ab"].shape == (2, 2, 64, 128)
        assert torch.equal(got["frame_a"], want["frame_a"]) and torch.equal(got["frame_b"], want["frame_b"])
        for k in ("flow_ab", "flow_ba"):  # exact flow can exceed float16's range near the camera: clamped
            torch.testing.assert_close(got[k], want[k].clamp(-FLOW_LIMIT, FLOW_LIMIT), **FP16)
    # Random access by sample key (key % len), and a fresh reader gives the same bytes.
    again = ShardPairs(gt_shards)
    for k in ("frame_a", "flow_ba"):
        assert torch.equal(ds[6][k], again[2][k])
    meta = ds.pair(3)["meta"]
    draw = ref.draws(1)[1]
    assert meta["t_a"] == draw["t_a"] and meta["t_b"] == draw["t_b"] and meta["crop_box"] == list(draw["box"])
    assert meta["flow"] == "gt" and meta["key"] == 1 and meta["pair"] == 1


def test_flow_is_stored_as_float16_and_clamped_to_its_range():
    flow = torch.tensor([[[0.1234, -63.9], [1e6, -2e5]], [[511.3, 0.0], [-0.001, 40000.0]]])
    got = _decode_flow(_encode_flow(flow))
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(got, flow.clamp(-FLOW_LIMIT, FLOW_LIMIT), **FP16)
    assert (got[0, 0, 1] - flow[0, 0, 1]).abs() <= 2**-11 * 64  # ~0.03 px at 64 px


def test_shard_format_index_and_report(gt_shards):
    index = json.loads((gt_shards / "index.json").read_text())
    assert index["__kind__"] == "wids-shard-index-v1" and index["wids_version"] == 1
    assert sum(s["nsamples"] for s in index["shardlist"]) == 8
    assert [s["url"] for s in index["shardlist"]] == sorted(p.name for p in gt_shards.glob("shard-*.tar"))
    assert index["poodle"]["resolution"] == [64, 128] and index["poodle"]["repeat"] == 2
    names = _members(gt_shards / "shard-000000.tar")
    assert names[:5] == [f"000000000.{e}" for e in ("flow_ab.npy", "flow_ba.npy", "frame_a.png", "frame_b.png",
                                                      "meta.json")]  # fmt: skip
    with tarfile.open(gt_shards / "shard-000000.tar") as tar:
        flow = np.load(io.BytesIO(tar.extractfile("000000000.flow_ab.npy").read()))
    assert flow.dtype == np.float16 and flow.shape == (2, 64, 128)
    report = json.loads((gt_shards / "prepare.json").read_text())
    assert report["pairs"] == 8 and report["requested_pairs"] == 7 and report["flow_source"] == "gt"
    assert report["config"]["data"]["resolution"] == [64, 128] and set(report["timings"]) >= {"total_s", "flow_s"}
    assert not list(gt_shards.parent.glob(".shards.tmp-*"))  # the temporary folder was renamed away


def test_dis_shards_from_the_video_loader(synth, tmp_path):
    cfg = load_config("synthdrive", [f"data.root={synth}", "flow.source=dis", "data.workers=0"])
    (tmp_path / "out").mkdir()  # an existing empty folder is fine
    report = prepare_shards(cfg, tmp_path / "out", 4, progress=False)
    assert report["flow_source"] == "dis" and report["pairs"] == 4 and report["skipped_at_scan"] == {}
    ds = ShardPairs(tmp_path / "out", resolution=(64, 128), repeat=2)
    ref = build_pair_dataset(cfg.data, seed=cfg.run.seed)
    dis = DISFlow()
    for key in range(len(ds)):
        got, want = ds[key], ref[key]
        assert torch.equal(got["frame_a"], want["frame_a"]) and torch.equal(got["frame_b"], want["frame_b"])
        flow_ab, flow_ba = dis.bidirectional(want["frame_a"], want["frame_b"])
        torch.testing.assert_close(got["flow_ab"], flow_ab, **FP16)
        torch.testing.assert_close(got["flow_ba"], flow_ba, **FP16)
        meta = ds.pair(2 * key)["meta"]
        assert meta["source"] == want["meta"][0].path and meta["source"].endswith(".mov")
        assert meta["t_a"] == want["meta"][0].t_a and meta["crop_box"] == list(want["meta"][0].crop.box)
    # Same seed, same pairs: preparing again is deterministic.
    prepare_shards(cfg, tmp_path / "again", 4, progress=False)
    assert torch.equal(ShardPairs(tmp_path / "again")[1]["frame_b"], ds[1]["frame_b"])


def test_unreadable_videos_are_skipped_and_counted(synth, tmp_path, monkeypatch):
    import shutil

    import poodle.data.pairs as pairs_mod
    from poodle.data.video import VideoDecodeError

    root = tmp_path / "sd"
    shutil.copytree(synth / "videos", root / "videos", ignore=shutil.ignore_patterns(".poodle-cache"))
    (root / "videos" / "train" / "junk.mov").write_bytes(b"not a video")  # unreadable at scan time
    broken = sorted((root / "videos" / "train").glob("*-*.mov"))[0]
    real = pairs_mod.read_frames

    def failing(path, *args, **kwargs):  # decoding fails later (a truncated file), caught by the dataset
        if Path(path) == broken:
            raise VideoDecodeError(str(path), "truncated")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pairs_mod, "read_frames", failing)
    cfg = load_config("synthdrive", [f"data.root={root}", "flow.source=dis", "data.workers=0"])
    report = prepare_shards(cfg, tmp_path / "out", 4, progress=False)
    assert list(report["skipped_at_scan"]) == [str(root / "videos" / "train" / "junk.mov")]
    assert list(report["failed_reads"]) == [str(broken)]
    assert report["pairs"] == 4  # the dataset drew the pairs from the readable video instead
    assert all(ShardPairs(tmp_path / "out").pair(i)["meta"]["source"] != str(broken) for i in range(4))


def test_train_from_shards_and_resume(synth, gt_shards, tmp_path):
    cfg = load_config("synthdrive", [*TINY, "data.dataset=shards", f"data.root={gt_shards}"])
    source, flow = build_pair_source(cfg)
    assert flow is None and source.num_videos == 4 and source.videos_per_rank(_single()) == 1
    # The batches carry the stored flow (the loop runs no estimator) and depend only on the step.
    batch = next(iter(source(1, 2, _single())))
    assert batch.flow_ab.shape == (2, 2, 64, 128) and batch.frame_a.dtype == torch.uint8
    assert torch.equal(next(iter(build_pair_source(cfg)[0](1, 2, _single()))).flow_ba, batch.flow_ba)
    assert pretrain(cfg, tmp_path / "run", source, None, stop_step=1)["step"] == 1
    resumed = pretrain(cfg, tmp_path / "run", *build_pair_source(cfg), stop_step=2)
    assert resumed["step"] == 2
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def _single():
    from poodle.engine.distributed import DistInfo

    return DistInfo(rank=0, world_size=1, local_rank=0)


def test_reader_errors_name_the_fix(gt_shards, tmp_path):
    with pytest.raises(ShardError, match="shards folder not found"):
        ShardPairs(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="no index.json"):
        ShardPairs(tmp_path / "empty")
    with pytest.raises(ShardError, match=r"hold 64x128 pairs but data.resolution is 32x64; set data.resolution"):
        ShardPairs(gt_shards, resolution=(32, 64))
    with pytest.raises(ShardError, match=r"set data.repeat=2"):
        ShardPairs(gt_shards, repeat=1)
    cfg = load_config("synthdrive", ["data.dataset=shards"])
    with pytest.raises(ShardError, match="data.root is empty"):
        build_pair_source(cfg)
    cfg = load_config("synthdrive", ["data.dataset=shards", f"data.root={gt_shards}", "data.resolution=[32,64]"])
    with pytest.raises(ValueError, match="resolution mismatch"):
        build_pair_source(cfg)


def test_writer_refuses_a_non_empty_output(synth, tmp_path):
    cfg = load_config("synthdrive", [f"data.root={synth}", "data.workers=0"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ShardError, match="not empty; pass --overwrite"):
        prepare_shards(cfg, out, 2, progress=False)
    with pytest.raises(ShardError, match="refusing to delete .*not made by poodle.*notes.txt"):
        prepare_shards(cfg, out, 2, progress=False, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    shards = tmp_path / "shards"
    prepare_shards(cfg, shards, 2, progress=False)
    with pytest.raises(ShardError, match="not empty"):
        prepare_shards(cfg, shards, 4, progress=False)
    assert prepare_shards(cfg, shards, 4, progress=False, overwrite=True)["pairs"] == 4
    assert ShardPairs(shards).num_pairs == 4
    with pytest.raises(ShardError, match="only SynthDrive has"):
        prepare_shards(load_config("synthdrive", ["data.dataset=folder", f"data.root={synth}"]), tmp_path / "x", 2)


def test_cli_prepare_then_pretrain(synth, tmp_path, capsys):
    out = tmp_path / "shards"
    args = ["prepare", "--config", "synthdrive", "--data", str(synth), "--dataset", "synthdrive", "--flow", "dis",
            "--out", str(out), "--pairs", "4", "--no-progress", "data.workers=0"]  # fmt: skip
    assert main(args) == 0
    assert "wrote 4 pairs (64x128, flow dis)" in capsys.readouterr().out
    assert main(args) == 2
    assert "not empty; pass --overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--frame-format", "jpg"]) == 0
    assert ShardPairs(out).frame_format == "jpg" and _members(out / "shard-000000.tar")[2].endswith("frame_a.jpg")
    run = tmp_path / "run"
    train = ["pretrain", "--config", "synthdrive", "--dataset", "shards", "--data", str(out), "--out", str(run),
             "--steps", "1", *TINY]  # fmt: skip
    assert main(train) == 0
    assert (run / "last.pt").is_file()
    assert main(["pretrain", "--dataset", "shards", "--data", str(tmp_path / "none"), "--out", str(run)]) == 2
    assert "shards folder not found" in capsys.readouterr().err


def test_the_folder_is_a_wids_dataset_and_the_reader_pickles(gt_shards, tmp_path):
    import pickle
    import shutil

    import wids

    ds = ShardPairs(gt_shards)
    ours = ds.read(5)
    assert set(ours) == {"frame_a.png", "frame_b.png", "flow_ab.npy", "flow_ba.npy", "meta.json"}
    # wids' own dataset class reads the same bytes from index.json (identity localname: no copy into a cache)
    theirs = wids.ShardListDataset(str(gt_shards / "index.json"), localname=lambda url: url, transformations=[])
    assert {k[1:]: v.getvalue() for k, v in theirs[5].items() if k.startswith(".")} == ours
    theirs.close()
    assert pickle.loads(pickle.dumps(ds)).read(5) == ours  # what a spawned DataLoader worker receives
    # A shard whose sample count disagrees with index.json is refused by name.
    shutil.copytree(gt_shards, tmp_path / "bad")
    index = json.loads((tmp_path / "bad" / "index.json").read_text())
    index["shardlist"][0]["nsamples"] += 1
    (tmp_path / "bad" / "index.json").write_text(json.dumps(index))
    with pytest.raises(ShardError, match=r"shard-000000.tar holds \d+ samples, index.json says"):
        ShardPairs(tmp_path / "bad").read(0)
