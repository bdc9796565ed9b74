"""The readout under `torchrun --nproc_per_node 2` (gloo, CPU): DDP keeps the head identical on both ranks, the val
split is evaluated exactly once across ranks, the all-reduced metrics equal a single-process evaluation of the same
head, and only rank 0 writes files."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
VAL_IMAGES = 7  # odd: the two ranks get 4 and 3 images, so any padding would show up as a duplicate


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single_process_matrix(root: Path, cfg, head_state: dict) -> torch.Tensor:
    """Confusion matrix of the trained head over the whole val split in this (non-distributed) process."""
    from poodle.data.seg_transforms import SegEvalTransform
    from poodle.data.segmentation import build_segmentation_dataset
    from poodle.evaluation.inference import infer
    from poodle.evaluation.linear import upsample_logits
    from poodle.evaluation.metrics import ConfusionMatrix
    from poodle.evaluation.readout import _to_input, build_model

    val = build_segmentation_dataset("synthdrive", root, "val", transform=SegEvalTransform(cfg.eval_resize))
    torch.manual_seed(cfg.seed)  # as run_readout: the same random backbone
    model = build_model("random", cfg, val.info.num_classes, "resnet18")
    model.head.load_state_dict(head_state)
    model.eval()
    cm = ConfusionMatrix(val.info.num_classes, val.info.ignore_index)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers (OMP_NUM_THREADS=1): same float reductions, same argmax
    try:
        with torch.no_grad():
            for i in range(len(val)):
                item = val[i]
                logits = infer(model, _to_input(item["image"][None], torch.device("cpu")), cfg.inference, cfg.window,
                               cfg.stride)  # fmt: skip
                mask = item["mask"][None]
                cm.update(upsample_logits(logits, tuple(mask.shape[-2:])).argmax(1), mask)
    finally:
        torch.set_num_threads(threads)
    return cm.matrix


@pytest.mark.slow
def test_readout_ddp_two_processes_gloo(tmp_path):
    from poodle.data.segmentation import build_segmentation_dataset
    from poodle.data.synthdrive import generate_dataset
    from poodle.evaluation.config import load_readout_config

    root = tmp_path / "synthdrive"
    generate_dataset(root, preset="small", seed=0, resolution=(64, 128), train_videos=1, val_videos=1, seconds=1.0,
                     flow_pairs=0, train_images=32, val_images=VAL_IMAGES, progress=False)  # fmt: skip
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(HERE / "helpers" / "readout_worker.py"), str(root), str(out), "3"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2

    # DDP averaged the gradients: identical head weights, and (broadcast before evaluating) identical BN statistics.
    assert r0["head"].keys() == r1["head"].keys()
    for k, v in r0["head"].items():
        assert torch.equal(v, r1["head"][k]), k

    # Every evaluation pass (eval_every=2 mid-training, then the final one) covers the val split exactly once.
    val_names = build_segmentation_dataset("synthdrive", root, "val").names
    assert len(val_names) == VAL_IMAGES
    assert len(r0["evals"]) == len(r1["evals"]) == 2
    for e0, e1 in zip(r0["evals"], r1["evals"]):
        assert sorted(e0["names"] + e1["names"]) == sorted(val_names)
        assert not set(e0["names"]) & set(e1["names"])
        assert torch.equal(e0["reduced"], e0["local"] + e1["local"])  # the all-reduce is a plain sum...
        assert torch.equal(e0["reduced"], e1["reduced"])  # ... that both ranks see

    # The all-reduced metrics are those of the same head evaluated in one process on the whole val split.
    cfg = load_readout_config("readout_synthdrive_cpu", r0["overrides"])
    head_pt = torch.load(out / "ro" / "head.pt", weights_only=False)
    for k, v in head_pt["head"].items():
        assert torch.equal(v, r0["head"][k]), k
    single = _single_process_matrix(root, cfg, head_pt["head"])
    assert torch.equal(single, r0["evals"][-1]["reduced"])
    m0, m1 = r0["results"]["metrics"], r1["results"]["metrics"]
    assert m0 == m1
    assert r0["results"]["train_loss"] == r1["results"]["train_loss"]  # the logged loss is the mean over ranks
    assert m0["num_pixels"] == int(single.sum())
    assert m0["per_class_tp"] == torch.diag(single).tolist()
    assert m0["per_class_gt"] == single.sum(1).tolist()

    # Only rank 0 writes results.json, table.md, head.pt, class_stats.json and figures.
    assert {"results.json", "table.md", "head.pt", "class_stats.json", "_figures"} <= set(r0["written"])
    assert r1["written"] == []
    for name in ("results.json", "table.md", "head.pt", "class_stats.json", "figures/predictions.png"):
        assert (out / "ro" / name).is_file(), name
