"""`results.json` (one evaluation's outcome) and the Markdown tables of the paper built from it.

Schema (`"schema": "poodle.results/1"`), every number a fraction in [0, 1], NaN stored as null:

    {
      "schema", "poodle_version", "timestamp",           # ISO-8601 UTC
      "dataset", "split", "classes": [...], "ignore_index",
      "method": {"name", "arch", "epochs", "pretrain", "weights"},   # description of what was evaluated
      "readout": "linear" | "upernet" | ..., "steps",
      "metrics": {"miou", "aacc", "macc", "per_class_iou", "per_class_acc", "num_pixels",
                  "per_class_tp", "per_class_gt", "per_class_pred"},
      "groups": {"small": [names], "large": [...], "rare": [...], "common": [...]},
      "group_metrics": {"mIoU": {"All", "Small", "Large", "Rare", "Common"}, "Acc": {...}},
      "config": {...}                                       # the resolved readout config
    }

A detection readout's file has `"task": "detection"`, `"readout": "faster_rcnn_c4" | "faster_rcnn_fpn"`, `"head"`
and COCO metrics instead: `"metrics": {"ap", "ap50", "ap75", "ap_small", ..., "ar_large", "per_class_ap",
"per_class_ap50", "num_gt", "num_images", "num_detections"}` (see `poodle.evaluation.detection`).

Tables print percentages with one decimal and "-" for a missing value: `table1_row` / `table1` (Table 1: mIoU and
Acc per dataset and readout), `table3_rows` (Table 3: group mIoU; with metric="Acc" Table 6), `per_class_table`
(Table 9), `coco_table` / `detection_tables` (detection) and `compare_table` (all of them side by side, one
label per result; detection results get mAP / AP50 columns in Table 1 and their own COCO table).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from poodle.data.classes import BDD100K_CLASSES
from poodle.evaluation.groups import GROUP_NAMES, ClassGroups, group_metrics
from poodle.evaluation.metrics import SegMetrics

SCHEMA = "poodle.results/1"
RESULTS_FILE = "results.json"
REQUIRED_KEYS = ("dataset", "split", "classes", "readout", "metrics")

# Table 9 column order (classes sorted by average pixel share, Table 10) and the paper's abbreviations.
BDD100K_TABLE9: tuple[tuple[str, str], ...] = (
    ("road", "Rd"),
    ("sky", "Sky"),
    ("building", "Bldg"),
    ("vegetation", "Veg"),
    ("car", "Car"),
    ("bus", "Bus"),
    ("fence", "Fence"),
    ("truck", "Truck"),
    ("wall", "Wall"),
    ("sidewalk", "S-walk"),
    ("terrain", "Terrain"),
    ("train", "Train"),
    ("pole", "Pole"),
    ("bicycle", "Bicycle"),
    ("person", "Person"),
    ("motorcycle", "M-cycle"),
    ("traffic sign", "Tr. Sign"),
    ("rider", "Rider"),
    ("traffic light", "Tr. Light"),
)
# Column titles: dataset and readout as a reader knows them (Table 1 abbreviates; a terminal has the room).
DATASET_NAMES = {"bdd100k": "BDD100K", "cityscapes": "Cityscapes", "ade20k": "ADE20K", "wtsem": "WT-Sem",
                 "synthdrive": "SynthDrive"}  # fmt: skip
READOUT_NAMES = {"linear": "linear", "upernet": "UperNet", "finetune": "fine-tuned",
                 "faster_rcnn_c4": "Faster R-CNN C4", "faster_rcnn_fpn": "Faster R-CNN FPN"}  # fmt: skip
ARCH_ABBREV = {"resnet18": "R18", "resnet34": "R34", "resnet50": "R50"}


# ---------------------------------------------------------------------------------------------------------------
# results.json


def make_results(
    metrics: SegMetrics,
    *,
    dataset: str,
    split: str,
    classes: Sequence[str],
    readout: str,
    method: Mapping[str, Any] | str | None = None,
    steps: int | None = None,
    groups: ClassGroups | None = None,
    config: Mapping[str, Any] | None = None,
    ignore_index: int = 255,
) -> dict[str, Any]:
    """Assemble a results dict (see the module docstring); `method` may be a plain name."""
    from poodle import __version__

    if len(classes) != metrics.num_classes:
        raise ValueError(f"{len(classes)} class names for metrics over {metrics.num_classes} classes")
    if isinstance(method, str):
        method = {"name": method}
    out: dict[str, Any] = {
        "schema": SCHEMA,
        "poodle_version": __version__,
        "timestamp": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "dataset": dataset,
        "split": split,
        "classes": list(classes),
        "ignore_index": ignore_index,
        "method": dict(method or {}),
        "readout": readout,
        "steps": steps,
        "metrics": metrics.to_dict(),
        "groups": groups.to_dict(list(classes)) if groups is not None else None,
        "group_metrics": _json_safe(group_metrics(metrics, groups)) if groups is not None else None,
        "config": dict(config or {}),
    }
    return out


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, Mapping):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_safe(x) for x in v]
    return v


def results_path(path: str | Path) -> Path:
    """A results.json file, or a folder holding one."""
    p = Path(path)
    return p / RESULTS_FILE if p.is_dir() else p


def write_results(results: Mapping[str, Any], path: str | Path) -> Path:
    """Write `results` as strict JSON (NaN -> null) to `path` (a file, or a folder that gets results.json)."""
    p = Path(path)
    if p.is_dir() or p.suffix != ".json":
        p = p / RESULTS_FILE
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_json_safe(dict(results)), indent=2, allow_nan=False) + "\n")
    tmp.replace(p)  # atomic: a reader never sees half a file
    return p


def read_results(path: str | Path) -> dict[str, Any]:
    """Read and check a results.json (file or folder). Raises ValueError (missing keys) or FileNotFoundError."""
    p = results_path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no results file at {p}")
    try:
        d = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p} is not valid JSON: {e}") from e
    if not isinstance(d, dict):
        raise ValueError(f"{p} is not a poodle results file (a JSON object is expected)")
    missing = [k for k in REQUIRED_KEYS if k not in d]
    if missing:
        raise ValueError(f"{p} lacks results keys {missing}")
    per_class, what = ("per_class_ap", "per-class APs") if is_detection(d) else ("per_class_iou", "per-class IoUs")
    if len(d["classes"]) != len(d["metrics"].get(per_class, [])):
        raise ValueError(f"{p}: {len(d['classes'])} classes but {len(d['metrics'].get(per_class, []))} {what}")
    return d


def seg_metrics(results: Mapping[str, Any]) -> SegMetrics:
    return SegMetrics.from_dict(results["metrics"])


def result_groups(results: Mapping[str, Any]) -> ClassGroups | None:
    g = results.get("groups")
    return ClassGroups.from_dict(g, results["classes"]) if g else None


def result_group_metrics(results: Mapping[str, Any]) -> dict[str, dict[str, float]] | None:
    """Group metrics, recomputed from the per-class numbers when the file has the groups but not the metrics."""
    gm = results.get("group_metrics")
    if gm:
        return {k: {g: _num(v.get(g)) for g in GROUP_NAMES} for k, v in gm.items()}
    groups = result_groups(results)
    return group_metrics(seg_metrics(results), groups) if groups is not None else None


def default_label(results: Mapping[str, Any], fallback: str = "-") -> str:
    name = (results.get("method") or {}).get("name")
    return str(name) if name else fallback


# ---------------------------------------------------------------------------------------------------------------
# Markdown


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def fmt_pct(v: float | None) -> str:
    """Fraction -> percentage with one decimal; None / NaN -> "-"."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{100.0 * float(v):.1f}"


def _cell(v: Any) -> str:
    return "-" if v is None or v == "" else str(v).replace("|", "\\|")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _labels(results: Sequence[Mapping[str, Any]], labels: Sequence[str] | None) -> list[str]:
    if labels is None:
        return [default_label(r, f"#{i + 1}") for i, r in enumerate(results)]
    if len(labels) != len(results):
        raise ValueError(f"{len(labels)} labels for {len(results)} results")
    return list(labels)


def _as_list(results: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [results] if isinstance(results, Mapping) else list(results)


def _arch(arch: Any) -> str:
    return ARCH_ABBREV.get(str(arch), str(arch)) if arch else "-"


def _shows_epochs(results: Sequence[Mapping[str, Any]]) -> bool:
    """The "Epochs" column is shown only when some result states its pretraining epochs (a column of dashes
    reads as missing data)."""
    return any((r.get("method") or {}).get("epochs") not in (None, "") for r in results)


def _method_header(epochs: bool) -> list[str]:
    return ["Method", "Arch"] + (["Epochs"] if epochs else []) + ["Pretrained on"]


def _method_cells(r: Mapping[str, Any], label: str, epochs: bool = True) -> list[str]:
    m = r.get("method") or {}
    return (
        [_cell(label), _cell(_arch(m.get("arch")))]
        + ([_cell(m.get("epochs"))] if epochs else [])
        + [_cell(m.get("pretrain"))]
    )


def readout_key(r: Mapping[str, Any]) -> str:
    """Column prefix of Table 1, e.g. "BDD100K linear" or "BDD100K Faster R-CNN C4" (dataset and readout)."""
    ds = str(r.get("dataset", "?"))
    ro = str(r.get("readout", "?"))
    return f"{DATASET_NAMES.get(ds.lower(), ds)} {READOUT_NAMES.get(ro.lower(), ro)}"


def _task_columns(r: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """(column title, metrics key) of one Table 1 cell group: mIoU and Acc, or COCO mAP and AP50 for detection."""
    return (("mAP", "ap"), ("AP50", "ap50")) if is_detection(r) else (("mIoU", "miou"), ("Acc", "aacc"))


TABLE1_HEADER = ("Method", "Arch", "Epochs", "Pretrained on", "Dataset", "Readout", "mIoU", "Acc")


def table1_row(results: Mapping[str, Any], label: str | None = None) -> str:
    """One Markdown row under `TABLE1_HEADER`: method description, dataset, readout, mIoU, Acc."""
    label = label if label is not None else default_label(results)
    m = results["metrics"]
    cells = _method_cells(results, label) + [
        _cell(results.get("dataset")),
        _cell(results.get("readout")),
        fmt_pct(m.get("miou")),
        fmt_pct(m.get("aacc")),
    ]
    return "| " + " | ".join(cells) + " |"


def table1(results: Mapping[str, Any] | Sequence[Mapping[str, Any]], labels: Sequence[str] | None = None) -> str:
    """Table 1 layout: one row per label, "<dataset> <readout> mIoU | Acc" column pairs ("mAP | AP50" for a
    detection readout). Results sharing a label and differing in dataset/readout share a row, like the paper's
    PooDLe row."""
    results = _as_list(results)
    labels = _labels(results, labels)
    keys: dict[str, tuple[tuple[str, str], ...]] = {}
    rows: list[tuple[str, Mapping[str, Any], dict[str, Mapping[str, Any]]]] = []
    for label, r in zip(labels, results):
        key = readout_key(r)
        keys.setdefault(key, _task_columns(r))
        row = next((x for x in rows if x[0] == label and key not in x[2]), None)
        if row is None:
            rows.append((label, r, {key: r}))
        else:
            row[2][key] = r
    epochs = _shows_epochs(results)
    header = _method_header(epochs) + [f"{k} {title}" for k, cols in keys.items() for title, _ in cols]
    body = []
    for label, first, by_key in rows:
        cells = _method_cells(first, label, epochs)
        for k, cols in keys.items():
            m = by_key[k]["metrics"] if k in by_key else {}
            cells += [fmt_pct(m.get(name)) for _, name in cols]
        body.append(cells)
    return _table(header, body)


def table3_rows(
    results: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    labels: Sequence[str] | None = None,
    metric: str = "mIoU",
) -> str:
    """Table 3 (metric="mIoU") or Table 6 (metric="Acc"): Method | Pretrained on | All | Small | Large | Rare |
    Common."""
    if metric not in ("mIoU", "Acc"):
        raise ValueError(f"metric must be 'mIoU' or 'Acc', got {metric!r}")
    results = _as_list(results)
    labels = _labels(results, labels)
    # Several datasets/readouts in one table: say which row is which (the paper's Table 3 is BDD linear only).
    if len({readout_key(r) for r in results}) > 1:
        labels = [f"{label} ({readout_key(r)})" for label, r in zip(labels, results)]
    body = []
    for label, r in zip(labels, results):
        gm = result_group_metrics(r)
        vals = gm[metric] if gm else {"All": r["metrics"].get("miou" if metric == "mIoU" else "aacc")}
        pretrain = (r.get("method") or {}).get("pretrain")
        body.append([_cell(label), _cell(pretrain)] + [fmt_pct(vals.get(g)) for g in GROUP_NAMES])
    return _table(["Method", "Pretrained on", *GROUP_NAMES], body)


def _class_columns(classes: Sequence[str]) -> list[tuple[int, str]]:
    """(class index, column title): Table 9 order and abbreviations for BDD100K, dataset order otherwise."""
    if tuple(classes) == BDD100K_CLASSES:
        index = {n: i for i, n in enumerate(classes)}
        return [(index[n], abbr) for n, abbr in BDD100K_TABLE9]
    return list(enumerate(classes))


def _per_class(results: Sequence[Mapping[str, Any]], labels: Sequence[str], key: str, columns=_class_columns) -> str:
    """One row per result of `metrics[key]` (a per-class list), one column per class; results with different
    class lists get separate tables (separated by a blank line)."""
    by_classes: dict[tuple[str, ...], list[tuple[str, Mapping[str, Any]]]] = {}
    if len({readout_key(r) for r in results}) > 1:
        labels = [f"{label} ({readout_key(r)})" for label, r in zip(labels, results)]
    for label, r in zip(labels, results):
        by_classes.setdefault(tuple(r["classes"]), []).append((label, r))
    tables = []
    for classes, items in by_classes.items():
        cols = columns(classes)
        body = []
        for label, r in items:
            values = r["metrics"][key]
            pretrain = (r.get("method") or {}).get("pretrain")
            body.append([_cell(label), _cell(pretrain)] + [fmt_pct(values[i]) for i, _ in cols])
        tables.append(_table(["Method", "Pretrained on"] + [_cell(t) for _, t in cols], body))
    return "\n\n".join(tables)


def per_class_table(
    results: Mapping[str, Any] | Sequence[Mapping[str, Any]], labels: Sequence[str] | None = None
) -> str:
    """Table 9: per-class IoU, one column per class, one row per result. Results with different class lists get
    separate tables (separated by a blank line)."""
    results = _as_list(results)
    return _per_class(results, _labels(results, labels), "per_class_iou")


# ---------------------------------------------------------------------------------------------------------------
# detection results (`"task": "detection"`, written by poodle.evaluation.detection)

# pycocotools' 12 summary numbers in `COCOeval.stats` order: results.json key and column title.
COCO_COLUMNS: tuple[tuple[str, str], ...] = (
    ("ap", "AP"), ("ap50", "AP50"), ("ap75", "AP75"), ("ap_small", "APs"), ("ap_medium", "APm"),
    ("ap_large", "APl"), ("ar_1", "AR1"), ("ar_10", "AR10"), ("ar_100", "AR100"), ("ar_small", "ARs"),
    ("ar_medium", "ARm"), ("ar_large", "ARl"),
)  # fmt: skip
TABLE1_DET_HEADER = ("Method", "Arch", "Epochs", "Pretrained on", "Dataset", "Det C4 mAP", "Det FPN mAP")


def is_detection(results: Mapping[str, Any]) -> bool:
    return results.get("task") == "detection"


def table1_detection_row(results: Mapping[str, Any], label: str) -> str:
    """One Markdown row under `TABLE1_DET_HEADER`: the result's mAP in its head's column, "-" in the other."""
    ap = fmt_pct(results["metrics"].get("ap"))
    head = results.get("head")
    cells = _method_cells(results, label) + [
        _cell(DATASET_NAMES.get(str(results.get("dataset")), results.get("dataset"))),
        ap if head == "c4" else "-",
        ap if head == "fpn" else "-",
    ]
    return "| " + " | ".join(cells) + " |"


def coco_table(results: Mapping[str, Any] | Sequence[Mapping[str, Any]], labels: Sequence[str] | None = None) -> str:
    """COCO's 12 numbers, one row per detection result: Method | Readout | AP | AP50 | ... | ARl."""
    results = _as_list(results)
    labels = _labels(results, labels)
    body = [
        [_cell(label), _cell(readout_key(r))] + [fmt_pct(r["metrics"].get(k)) for k, _ in COCO_COLUMNS]
        for label, r in zip(labels, results)
    ]
    return _table(["Method", "Readout", *(t for _, t in COCO_COLUMNS)], body)


def per_class_ap_table(
    results: Mapping[str, Any] | Sequence[Mapping[str, Any]], labels: Sequence[str] | None = None
) -> str:
    """Per-class COCO AP of detection results, one column per class in the dataset's order."""
    results = _as_list(results)
    return _per_class(results, _labels(results, labels), "per_class_ap", columns=lambda c: list(enumerate(c)))


def detection_tables(results: Mapping[str, Any], label: str) -> str:
    """A detection run's table.md: the Table 1-style row, the 12 COCO numbers and per-class AP50/AP with the
    number of ground-truth boxes per class."""
    m = results["metrics"]
    head = str(results.get("head", "?")).upper()
    classes = results["classes"]
    return "\n".join([
        f"## {results['dataset']} detection readout: Faster R-CNN {head}, frozen backbone ({results['steps']} steps)",
        "",
        "### Table 1 layout (mAP = COCO AP at IoU 0.50:0.95)",
        "",
        "| " + " | ".join(TABLE1_DET_HEADER) + " |",
        "|" + "---|" * len(TABLE1_DET_HEADER),
        table1_detection_row(results, label),
        "",
        "### COCO metrics",
        "",
        coco_table(results, [label]),
        "",
        "### Per-class AP",
        "",
        "| | " + " | ".join(_cell(c) for c in classes) + " |",
        "|" + "---|" * (len(classes) + 1),
        "| AP | " + " | ".join(fmt_pct(a) for a in m["per_class_ap"]) + " |",
        "| AP50 | " + " | ".join(fmt_pct(a) for a in m["per_class_ap50"]) + " |",
        "| GT boxes | " + " | ".join(str(n) for n in m["num_gt"]) + " |",
        "",
    ])  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------


def compare_table(
    results: Sequence[Mapping[str, Any]], labels: Sequence[str] | None = None, per_class: bool = False
) -> str:
    """Several results side by side, as Markdown sections: Table 1 (mIoU/Acc per segmentation readout, mAP/AP50
    per detection readout), then for segmentation Table 3 (group mIoU) and Table 6 (group Acc), for detection
    COCO's 12 numbers; with `per_class`, Table 9 (per-class IoU) and per-class AP."""
    results = _as_list(results)
    labels = _labels(results, labels)
    seg = [(label, r) for label, r in zip(labels, results) if not is_detection(r)]
    det = [(label, r) for label, r in zip(labels, results) if is_detection(r)]
    title = "mIoU and pixel accuracy" if not det else "mIoU / pixel accuracy and detection mAP / AP50"
    parts = [f"### {title} (Table 1 layout)\n\n" + table1(results, labels)]
    if seg:
        s_labels, s_results = [x[0] for x in seg], [x[1] for x in seg]
        parts += [
            "### mIoU by class group (Table 3 layout)\n\n" + table3_rows(s_results, s_labels, "mIoU"),
            "### Pixel accuracy by class group (Table 6 layout)\n\n" + table3_rows(s_results, s_labels, "Acc"),
        ]
        if per_class:
            parts.append("### Per-class IoU (Table 9 layout)\n\n" + per_class_table(s_results, s_labels))
    if det:
        d_labels, d_results = [x[0] for x in det], [x[1] for x in det]
        parts.append(
            "### Detection: COCO metrics (AP at IoU 0.50:0.95 unless named)\n\n" + coco_table(d_results, d_labels)
        )
        if per_class:
            parts.append("### Detection: per-class AP\n\n" + per_class_ap_table(d_results, d_labels))
    return "\n\n".join(parts) + "\n"
