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

Tables print percentages with one decimal and "-" for a missing value: `table1_row` / `table1` (Table 1: mIoU and
Acc per dataset and readout), `table3_rows` (Table 3: group mIoU; with metric="Acc" Table 6), `per_class_table`
(Table 9) and `compare_table` (all of them side by side, one label per result).
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
DATASET_ABBREV = {"bdd100k": "BDD", "cityscapes": "CS", "ade20k": "ADE", "wtsem": "WT-Sem", "synthdrive": "Synth"}
READOUT_ABBREV = {"linear": "Lin", "upernet": "UperNet", "finetune": "FT"}


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
    missing = [k for k in REQUIRED_KEYS if k not in d]
    if missing:
        raise ValueError(f"{p} lacks results keys {missing}")
    if len(d["classes"]) != len(d["metrics"].get("per_class_iou", [])):
        raise ValueError(f"{p}: {len(d['classes'])} classes but {len(d['metrics']['per_class_iou'])} per-class IoUs")
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


def _method_cells(r: Mapping[str, Any], label: str) -> list[str]:
    m = r.get("method") or {}
    return [_cell(label), _cell(m.get("arch")), _cell(m.get("epochs")), _cell(m.get("pretrain"))]


def readout_key(r: Mapping[str, Any]) -> str:
    """Column prefix of Table 1, e.g. "BDD Lin" (dataset and readout abbreviated like the paper)."""
    ds = str(r.get("dataset", "?"))
    ro = str(r.get("readout", "?"))
    return f"{DATASET_ABBREV.get(ds.lower(), ds)} {READOUT_ABBREV.get(ro.lower(), ro)}"


TABLE1_HEADER = ("Method", "Arch", "Ep.", "Pretrain", "Dataset", "Readout", "mIoU", "Acc")


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
    """Table 1 layout: one row per label, "<DS> <readout> mIoU | Acc" column pairs (results sharing a label and
    differing in dataset/readout share a row, like the paper's PooDLe row)."""
    results = _as_list(results)
    labels = _labels(results, labels)
    keys: list[str] = []
    rows: list[tuple[str, Mapping[str, Any], dict[str, Mapping[str, Any]]]] = []
    for label, r in zip(labels, results):
        key = readout_key(r)
        if key not in keys:
            keys.append(key)
        row = next((x for x in rows if x[0] == label and key not in x[2]), None)
        if row is None:
            rows.append((label, r, {key: r}))
        else:
            row[2][key] = r
    header = ["Method", "Arch", "Ep.", "Pretrain"] + [f"{k} {m}" for k in keys for m in ("mIoU", "Acc")]
    body = []
    for label, first, by_key in rows:
        cells = _method_cells(first, label)
        for k in keys:
            m = by_key[k]["metrics"] if k in by_key else {}
            cells += [fmt_pct(m.get("miou")), fmt_pct(m.get("aacc"))]
        body.append(cells)
    return _table(header, body)


def table3_rows(
    results: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    labels: Sequence[str] | None = None,
    metric: str = "mIoU",
) -> str:
    """Table 3 (metric="mIoU") or Table 6 (metric="Acc"): Method | Pretrain | All | Small | Large | Rare | Common."""
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
    return _table(["Method", "Pretrain", *GROUP_NAMES], body)


def _class_columns(classes: Sequence[str]) -> list[tuple[int, str]]:
    """(class index, column title): Table 9 order and abbreviations for BDD100K, dataset order otherwise."""
    if tuple(classes) == BDD100K_CLASSES:
        index = {n: i for i, n in enumerate(classes)}
        return [(index[n], abbr) for n, abbr in BDD100K_TABLE9]
    return list(enumerate(classes))


def per_class_table(
    results: Mapping[str, Any] | Sequence[Mapping[str, Any]], labels: Sequence[str] | None = None
) -> str:
    """Table 9: per-class IoU, one column per class, one row per result. Results with different class lists get
    separate tables (separated by a blank line)."""
    results = _as_list(results)
    labels = _labels(results, labels)
    by_classes: dict[tuple[str, ...], list[tuple[str, Mapping[str, Any]]]] = {}
    if len({readout_key(r) for r in results}) > 1:
        labels = [f"{label} ({readout_key(r)})" for label, r in zip(labels, results)]
    for label, r in zip(labels, results):
        by_classes.setdefault(tuple(r["classes"]), []).append((label, r))
    tables = []
    for classes, items in by_classes.items():
        cols = _class_columns(classes)
        body = []
        for label, r in items:
            iou = r["metrics"]["per_class_iou"]
            pretrain = (r.get("method") or {}).get("pretrain")
            body.append([_cell(label), _cell(pretrain)] + [fmt_pct(iou[i]) for i, _ in cols])
        tables.append(_table(["Method", "Pretrain"] + [_cell(t) for _, t in cols], body))
    return "\n\n".join(tables)


def compare_table(
    results: Sequence[Mapping[str, Any]], labels: Sequence[str] | None = None, per_class: bool = False
) -> str:
    """Several results side by side: Table 1 (mIoU/Acc), Table 3 (group mIoU), Table 6 (group Acc), optionally
    Table 9 (per-class IoU), as Markdown sections."""
    results = _as_list(results)
    labels = _labels(results, labels)
    parts = [
        "### mIoU and pixel accuracy (Table 1 layout)\n\n" + table1(results, labels),
        "### mIoU by class group (Table 3 layout)\n\n" + table3_rows(results, labels, "mIoU"),
        "### Pixel accuracy by class group (Table 6 layout)\n\n" + table3_rows(results, labels, "Acc"),
    ]
    if per_class:
        parts.append("### Per-class IoU (Table 9 layout)\n\n" + per_class_table(results, labels))
    return "\n\n".join(parts) + "\n"
