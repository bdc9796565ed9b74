import json

import numpy as np
import pytest
import torch
from PIL import Image

from poodle.cli import main as cli_main
from poodle.data.classes import BDD100K_CLASSES
from poodle.evaluation.groups import BDD100K_GROUPS, ClassGroups
from poodle.evaluation.metrics import ConfusionMatrix
from poodle.evaluation.tables import (
    compare_table,
    fmt_pct,
    make_results,
    per_class_table,
    read_results,
    result_group_metrics,
    seg_metrics,
    table1,
    table1_row,
    table3_rows,
    write_results,
)


def _bdd_results(seed: int = 0, name: str = "PooDLe", readout: str = "linear", dataset: str = "bdd100k") -> dict:
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 18, (2, 8, 8), generator=g)  # class 18 (bicycle) never in GT...
    pred = target.clone()
    flip = torch.rand(target.shape, generator=g) < 0.3
    pred[flip] = torch.randint(0, 18, (int(flip.sum()),), generator=g)  # ...nor predicted: IoU NaN
    cm = ConfusionMatrix(19)
    cm.update(pred, target)
    method = {"name": name, "arch": "R50", "epochs": 100, "pretrain": "BDD", "weights": "/runs/x/backbone.pth"}
    return make_results(
        cm.compute(), dataset=dataset, split="val", classes=BDD100K_CLASSES, readout=readout, method=method,
        steps=60000, groups=BDD100K_GROUPS, config={"lr": 0.02},
    )  # fmt: skip


def test_results_json_round_trip(tmp_path):
    res = _bdd_results()
    assert res["metrics"]["per_class_iou"][18] is None  # NaN stored as null
    path = write_results(res, tmp_path / "run")  # a folder -> run/results.json
    assert path == tmp_path / "run" / "results.json"
    text = path.read_text()
    assert "NaN" not in text  # strict JSON
    raw = json.loads(text)
    for key in ("schema", "poodle_version", "timestamp", "dataset", "split", "classes", "method", "readout", "steps",
                "metrics", "groups", "group_metrics", "config"):  # fmt: skip
        assert key in raw
    assert raw["metrics"]["per_class_iou"][18] is None
    assert "bicycle" in raw["groups"]["small"]
    back = read_results(tmp_path / "run")
    assert read_results(path) == back
    m, m0 = seg_metrics(back), seg_metrics(res)
    assert m.per_class_iou == pytest.approx(m0.per_class_iou, nan_ok=True)
    assert m.miou == pytest.approx(m0.miou) and m.per_class_gt == m0.per_class_gt
    gm = result_group_metrics(back)
    assert gm["mIoU"]["All"] == pytest.approx(m.miou) and gm["Acc"]["All"] == pytest.approx(m.aacc)
    # Group metrics are recomputed from per-class numbers when a file lacks them.
    del back["group_metrics"]
    assert result_group_metrics(back)["mIoU"]["Small"] == pytest.approx(gm["mIoU"]["Small"])


def test_read_results_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_results(tmp_path / "nothing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_results(tmp_path / "bad.json")
    (tmp_path / "partial.json").write_text('{"dataset": "x"}')
    with pytest.raises(ValueError, match="lacks"):
        read_results(tmp_path / "partial.json")


def test_make_results_checks_class_count():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0]), torch.tensor([0]))
    with pytest.raises(ValueError, match="class names"):
        make_results(cm.compute(), dataset="x", split="val", classes=("a", "b"), readout="linear")


def test_formatting():
    assert fmt_pct(0.39237) == "39.2" and fmt_pct(1.0) == "100.0" and fmt_pct(0.0) == "0.0"
    assert fmt_pct(None) == "-" and fmt_pct(float("nan")) == "-"


def test_table1_row_and_pivot():
    res = _bdd_results()
    row = table1_row(res)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:6] == ["PooDLe", "R50", "100", "BDD", "bdd100k", "linear"]
    assert cells[6] == fmt_pct(res["metrics"]["miou"]) and cells[7] == fmt_pct(res["metrics"]["aacc"])
    # Same label, two readouts/datasets -> one row, Table 1 column pairs; a missing cell is "-".
    cs = _bdd_results(1, dataset="cityscapes")
    other = _bdd_results(2, name="FlowE")
    lines = table1([res, cs, other]).splitlines()
    assert lines[0] == (
        "| Method | Arch | Epochs | Pretrained on | BDD100K linear mIoU | BDD100K linear Acc | Cityscapes linear mIoU"
        " | Cityscapes linear Acc |"
    )
    assert lines[1] == "|---|---|---|---|---|---|---|---|"
    assert len(lines) == 4
    assert lines[2].startswith("| PooDLe | R50 | 100 | BDD | ") and "| - |" not in lines[2]
    assert lines[3].startswith("| FlowE |") and lines[3].endswith("| - | - |")


def test_table3_and_table6():
    res = _bdd_results()
    gm = result_group_metrics(res)
    lines = table3_rows([res], ["mine"]).splitlines()
    assert lines[0] == "| Method | Pretrained on | All | Small | Large | Rare | Common |"
    expected = [fmt_pct(gm["mIoU"][k]) for k in ("All", "Small", "Large", "Rare", "Common")]
    assert lines[2] == "| mine | BDD | " + " | ".join(expected) + " |"
    acc = table3_rows(res, ["mine"], metric="Acc").splitlines()[2]
    assert acc.split("|")[3].strip() == fmt_pct(res["metrics"]["aacc"])
    with pytest.raises(ValueError):
        table3_rows(res, metric="F1")
    with pytest.raises(ValueError, match="labels"):
        table3_rows(res, ["a", "b"])


def test_per_class_table_bdd_order_and_dashes():
    res = _bdd_results()
    lines = per_class_table(res).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:5] == ["Method", "Pretrained on", "Rd", "Sky", "Bldg"] and header[-1] == "Tr. Light"
    assert len(header) == 2 + 19
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[header.index("Bicycle")] == "-"  # absent from GT and prediction: NaN
    assert cells[header.index("Rd")] == fmt_pct(res["metrics"]["per_class_iou"][0])
    assert all(c == "-" or (c.count(".") == 1 and len(c.split(".")[1]) == 1) for c in cells[2:])


def test_per_class_table_other_classes():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    res = make_results(cm.compute(), dataset="folder", split="val", classes=("a|b", "c"), readout="linear")
    assert per_class_table(res, ["x"]).splitlines()[0] == "| Method | Pretrained on | a\\|b | c |"
    # Without groups the group table still shows All and dashes.
    assert table3_rows(res, ["x"]).splitlines()[2] == f"| x | - | {fmt_pct(res['metrics']['miou'])} | - | - | - | - |"


def test_compare_table_and_cli(tmp_path, capsys):
    a = write_results(_bdd_results(0), tmp_path / "a")
    b = write_results(_bdd_results(1, name="FlowE"), tmp_path / "b" / "flowe.json")
    text = compare_table([read_results(a), read_results(b)], ["A", "B"], per_class=True)
    assert text.count("### ") == 4 and "Table 9 layout" in text
    assert cli_main(["compare", str(tmp_path / "a"), str(b), "--labels", "ours,theirs", "--per-class"]) == 0
    out = capsys.readouterr().out
    assert "| ours | R50 | 100 | BDD |" in out and "| theirs | R50 | 100 | BDD |" in out
    assert "| Method | Pretrained on | All | Small | Large | Rare | Common |" in out and "| Rd |" in out
    assert cli_main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "| PooDLe |" in out and "| FlowE |" in out and "Table 9" not in out
    assert cli_main(["compare", str(a), "--labels", "x,y"]) == 2
    assert "labels" in capsys.readouterr().err
    assert cli_main(["compare", str(tmp_path / "missing")]) == 2


def _write_folder_dataset(root, maps, classes=("road", "person")):
    (root / "images" / "train").mkdir(parents=True)
    (root / "masks" / "train").mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    for i, m in enumerate(maps):
        Image.fromarray(np.zeros((*m.shape, 3), np.uint8)).save(root / "images" / "train" / f"{i}.png")
        Image.fromarray(m.astype(np.uint8)).save(root / "masks" / "train" / f"{i}.png")


def test_stats_cli_on_folder_dataset(tmp_path, capsys):
    pytest.importorskip("poodle.data.segmentation")
    maps = [np.zeros((10, 10), np.uint8) for _ in range(5)]
    maps[0][0, 0] = 1  # person: 1 % of the one image in five it is in -> avg 1.0 % (Small), 20 % of images (Rare)
    maps[1][9, :] = 255
    _write_folder_dataset(tmp_path / "ds", maps)
    out_md, out_json = tmp_path / "stats.md", tmp_path / "stats.json"
    assert cli_main(["stats", "--dataset", "folder", "--data", str(tmp_path / "ds"), "--out", str(out_md)]) == 0
    text = capsys.readouterr().out
    assert "| Class | road | person |" in text and "| Avg Pix. % / Im. | 97.8 | 1.0 |" in text
    assert "- Small (1): person" in text and "- Rare (1): person" in text and "2.00 % ignored" in text
    assert out_md.read_text() in text
    assert cli_main(["stats", "--dataset", "folder", "--data", str(tmp_path / "ds"), "--out", str(out_json)]) == 0
    d = json.loads(out_json.read_text())
    assert d["groups"]["small"] == ["person"] and d["images"] == 5
    assert ClassGroups.from_dict(d["group_indices"]) == ClassGroups(small=(1,), large=(0,), rare=(1,), common=(0,))
    capsys.readouterr()
    assert cli_main(["stats", "--dataset", "folder", "--data", str(tmp_path / "nope")]) == 2
    assert cli_main(["stats", "--dataset", "bdd100k", "--data", str(tmp_path / "ds")]) == 2  # wrong layout
    assert "error" in capsys.readouterr().err


def test_stats_cli_refuses_bad_masks_in_one_line(tmp_path, capsys):
    maps = [np.random.default_rng(i).integers(0, 2, (40, 40)).astype(np.uint8) for i in range(3)]
    _write_folder_dataset(tmp_path / "ds", maps)
    masks = tmp_path / "ds" / "masks" / "train"
    args = ["stats", "--dataset", "folder", "--data", str(tmp_path / "ds"), "--workers", "0"]
    capsys.readouterr()
    # A truncated mask used to crash with a traceback.
    data = (masks / "1.png").read_bytes()
    (masks / "1.png").write_bytes(data[: len(data) // 2])
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "1.png" in err and "truncated" in err
    # An RGB mask used to be counted once per channel, silently.
    Image.fromarray(maps[1]).save(masks / "1.png")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(masks / "2.png")
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "2.png is a RGB image" in err
    # A value the classes.txt does not have.
    Image.fromarray(np.full((40, 40), 7, np.uint8)).save(masks / "2.png")
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "2.png" in err and "7 (1600 px)" in err and "0-1 or 255" in err


def test_stats_cli_states_the_wtsem_encoding(tmp_path, capsys):
    root = tmp_path / "wt"
    for split in ("train", "val"):
        m = (np.arange(160) % 150).reshape(10, 16).astype(np.uint8)  # 0-149: zero_based
        (root / "images" / split / "v").mkdir(parents=True)
        (root / "annotations" / split / "v").mkdir(parents=True)
        Image.fromarray(np.zeros((10, 16, 3), np.uint8)).save(root / "images" / split / "v" / "0.png")
        Image.fromarray(m).save(root / "annotations" / split / "v" / "0.png")
    out = tmp_path / "s.json"
    assert cli_main(["stats", "--dataset", "wtsem", "--data", str(root), "--split", "val", "--out", str(out)]) == 0
    assert "Label encoding: zero_based (detected: 0 occurs" in capsys.readouterr().out
    assert json.loads(out.read_text())["data_check"]["label_encoding"]["encoding"] == "zero_based"
    assert cli_main(["stats", "--dataset", "wtsem", "--data", str(root), "--encoding", "one_based"]) == 0
    assert "auto-detection would choose zero_based" in capsys.readouterr().out


def test_analyze_subcrops_refuses_a_truncated_mask_in_one_line(tmp_path, capsys):
    maps = [np.random.default_rng(i).integers(0, 2, (40, 40)).astype(np.uint8) for i in range(3)]
    _write_folder_dataset(tmp_path / "ds", maps)
    mask = tmp_path / "ds" / "masks" / "train" / "1.png"
    mask.write_bytes(mask.read_bytes()[:30])
    capsys.readouterr()
    args = ["analyze", "subcrops", "--dataset", "folder", "--data", str(tmp_path / "ds"), "--subcrops", "8"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "1.png" in err


def test_table1_hides_an_epochs_column_nobody_filled():
    res = _bdd_results()
    res["method"].pop("epochs")
    lines = table1(res, ["run"]).splitlines()
    assert lines[0] == "| Method | Arch | Pretrained on | BDD100K linear mIoU | BDD100K linear Acc |"
    assert lines[2].startswith("| run | R50 | BDD | ")


def _detection_results(name: str, head: str, seed: int = 0) -> dict:
    """A results.json as `poodle eval detection` writes it, with metrics computed by pycocotools."""
    from poodle.evaluation.detection import READOUT_NAMES, coco_evaluate

    classes = ["pedestrian", "car"]
    gt = {
        "images": [{"id": 1, "width": 64, "height": 64}],
        "categories": [{"id": i + 1, "name": c} for i, c in enumerate(classes)],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 2, "bbox": [4, 4, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [40, 30, 8, 20], "area": 160, "iscrowd": 0},
        ],
    }
    dets = [{"image_id": 1, "category_id": 2, "bbox": [4 + seed, 4, 20, 20], "score": 0.9}]
    metrics = coco_evaluate(gt, dets, classes)
    metrics.pop("summary")
    return {"schema": "poodle.results/1", "task": "detection", "dataset": "bdd100k", "split": "val",
            "classes": classes, "method": {"name": name, "arch": "resnet50", "pretrain": "BDD100K"},
            "readout": READOUT_NAMES[head], "head": head, "steps": 10, "metrics": metrics}  # fmt: skip


def test_compare_puts_detection_next_to_segmentation(tmp_path, capsys):
    seg = write_results(_bdd_results(0), tmp_path / "seg")
    c4 = write_results(_detection_results("PooDLe", "c4"), tmp_path / "c4")
    fpn = write_results(_detection_results("PooDLe", "fpn", seed=3), tmp_path / "fpn")
    rows = [read_results(seg), read_results(c4), read_results(fpn)]
    lines = table1(rows).splitlines()
    # One PooDLe row: the segmentation pair, then mAP / AP50 for each detection head.
    assert lines[0].endswith(
        "| BDD100K linear mIoU | BDD100K linear Acc | BDD100K Faster R-CNN C4 mAP | BDD100K Faster R-CNN C4 AP50"
        " | BDD100K Faster R-CNN FPN mAP | BDD100K Faster R-CNN FPN AP50 |"
    )
    assert len(lines) == 3
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    c4_ap, fpn_ap = rows[1]["metrics"]["ap"], rows[2]["metrics"]["ap"]
    assert cells[-4:] == [fmt_pct(c4_ap), fmt_pct(rows[1]["metrics"]["ap50"]), fmt_pct(fpn_ap),
                          fmt_pct(rows[2]["metrics"]["ap50"])]  # fmt: skip
    assert c4_ap == pytest.approx(0.5) and fpn_ap < c4_ap  # a perfect car box, the pedestrian missed; shifted box

    text = compare_table(rows, per_class=True)
    assert "Detection: COCO metrics" in text and "Detection: per-class AP" in text
    # The group tables hold the segmentation result only.
    assert text.split("### Pixel accuracy by class group")[1].split("###")[0].count("| PooDLe |") == 1
    assert cli_main(["compare", str(tmp_path / "seg"), str(tmp_path / "c4"), str(tmp_path / "fpn")]) == 0
    out = capsys.readouterr().out
    assert "| PooDLe | BDD100K Faster R-CNN C4 | 50.0 |" in out  # the COCO table: AP first


def test_read_results_checks_detection_files(tmp_path):
    res = _detection_results("x", "c4")
    res["metrics"]["per_class_ap"] = [0.1]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(res))
    with pytest.raises(ValueError, match="2 classes but 1 per-class APs"):
        read_results(path)
