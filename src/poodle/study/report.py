"""Aggregate a study's jobs over seeds: mean +- std tables, tested claims, figures (OUT/report.md, summary.json).

Statistics: each (variant, seed) run is one sample. Differences between two variants are tested with Welch's
unequal-variance t-test (two-sided); a claim "holds" when the difference has the claimed sign at p < 0.05, is
"contradicted" when it has the opposite sign at p < 0.05, and is "not resolved" otherwise (the seeds cannot tell
the difference from noise). No multiple-comparison correction: the claims are pre-registered (`CLAIMS`, stored
in plan.json before the run) and every test is listed, so a reader can apply one.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

GROUPS = ("All", "Small", "Large", "Rare", "Common")
ALPHA = 0.05


# ------------------------------------------------------------------------------------------------ statistics


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
            last = d * c
        if abs(last - 1.0) < 1e-14:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(ln) * _betacf(a, b, x) / a
    return 1.0 - math.exp(ln) * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom."""
    if math.isnan(t) or math.isnan(df) or df <= 0:
        return math.nan
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def welch(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Welch's t-test of mean(a) - mean(b): {diff, t, df, p}; p is NaN with fewer than 2 samples per side."""
    diff = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return {"diff": diff, "t": math.nan, "df": math.nan, "p": math.nan}
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se2 = va + vb
    if se2 == 0.0:
        return {"diff": diff, "t": math.copysign(math.inf, diff) if diff else math.nan, "df": math.inf,
                "p": 0.0 if diff else 1.0}  # fmt: skip
    df = se2**2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    t = diff / math.sqrt(se2)
    return {"diff": diff, "t": t, "df": df, "p": t_two_sided_p(t, df)}


def verdict(test: dict[str, float], sign: int = 1) -> str:
    """'holds' / 'contradicted' / 'not resolved' for the claim sign * diff > 0."""
    p, d = test["p"], test["diff"] * sign
    if math.isnan(p):
        return "not resolved (one seed)"
    if p < ALPHA:
        return "holds" if d > 0 else "contradicted"
    return "not resolved"


def t_critical(df: float, alpha: float = ALPHA) -> float:
    """The two-sided critical value of Student's t: P(|T| >= t) = alpha (bisection on t_two_sided_p)."""
    lo, hi = 0.0, 1e3
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_two_sided_p(mid, df) > alpha:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def detectable_difference(std: float, n: int) -> float:
    """The smallest difference between two variants with this seed-to-seed std and n seeds each that Welch's test
    calls significant at ALPHA (equal stds: df = 2(n - 1))."""
    if n < 2 or math.isnan(std):
        return math.nan
    return t_critical(2.0 * (n - 1)) * std * math.sqrt(2.0 / n)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) if len(values) > 1 else math.nan)


def pm(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    m, s = mean_std(values)
    if math.isnan(s):
        return f"{scale * m:.{digits}f}"
    return f"{scale * m:.{digits}f} ± {scale * s:.{digits}f}"


# ------------------------------------------------------------------------------------------------ collection


def load_jobs(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/seed*/job.json"))]


def by_variant(records: list[dict[str, Any]], order: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {k: [] for k in order}
    for r in records:
        grouped.setdefault(r["variant"], []).append(r)
    return {k: sorted(v, key=lambda r: r["seed"]) for k, v in grouped.items() if v}


def metric(recs: list[dict[str, Any]], group: str, kind: str = "mIoU") -> list[float]:
    return [float(r["group_metrics"][kind][group]) for r in recs]


def _small_minus_large(recs: list[dict[str, Any]]) -> list[float]:
    return [a - b for a, b in zip(metric(recs, "Small"), metric(recs, "Large"))]


# ------------------------------------------------------------------------------------------------ claims


def _fmt_test(name_a: str, name_b: str, t: dict[str, float], what: str) -> str:
    p = "n/a" if math.isnan(t["p"]) else f"{t['p']:.3f}"
    return f"{what}: {name_a} − {name_b} = {100 * t['diff']:+.2f} points (Welch p = {p})"


# The pre-registered claims (stored in plan.json before a run; every one is reported, also when its variants are
# missing). Keys are stable: tests and summary.json refer to them.
CLAIMS: dict[str, str] = {
    "scale": "the scale resolves small objects: PooDLe (row 7) beats random init on Small (and All) mIoU",
    "poodle_vs_flowe": "PooDLe beats FlowE on All and on Small mIoU (Table 4 row 7 vs row 1; also FlowE as released)",
    "poodle_vs_baselines": "PooDLe beats each baseline on All mIoU (and on Small)",
    "ablation_order": "row 7 > row 5 > row 1 on All mIoU (the SDM helps, and the pooled loss on top of it)",
    "subcrop_size": "smaller subcrops help small classes: subcrop area 0.04-0.18 beats 0.54-1.00 on Small mIoU",
}
BASELINES = ("pooled_only", "flowe_release", "byol", "dino", "densecl", "pixpro")


def claims(v: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every pre-registered claim with its Welch tests, a verdict per test and a one-line reading per test. A claim
    whose variants did not run says so ("not run") instead of disappearing."""
    out: list[dict[str, Any]] = []

    def name(key: str) -> str:
        return v[key][0]["label"]

    def compare(tests, verdicts, reading, a: str, b: str, group: str, tag: str) -> None:
        t = welch(metric(v[a], group), metric(v[b], group))
        tests[tag], verdicts[tag] = t, verdict(t)
        reading.append(_fmt_test(name(a), name(b), t, f"{group} mIoU"))

    def claim(key: str, pairs: list[tuple[str, str, str]], **extra: Any) -> None:
        tests: dict[str, Any] = {}
        verdicts: dict[str, str] = {}
        reading: list[str] = []
        missing = sorted({k for a, b, _ in pairs for k in (a, b) if k not in v})
        for a, b, group in pairs:
            if a in v and b in v:
                compare(tests, verdicts, reading, a, b, group, f"{a}_vs_{b}_{group.lower()}")
        if not tests:
            verdicts = {"all": "not run"}
        if missing:
            reading.append(f"not run in this study: {', '.join(missing)}")
        out.append({"claim": key, "text": CLAIMS[key], "tests": tests, "verdict": verdicts, "reading": reading,
                    **extra})  # fmt: skip

    p7 = "row7_poodle"
    claim("scale", [(p7, "random", "Small"), (p7, "random", "All")])
    claim("poodle_vs_flowe", [(p7, "row1_flowe", "All"), (p7, "row1_flowe", "Small"),
                              (p7, "flowe_release", "All"), (p7, "flowe_release", "Small")])  # fmt: skip
    claim("poodle_vs_baselines", [(p7, b, g) for b in BASELINES for g in ("All", "Small")])
    rows = [k for k in ("row1_flowe", "row5_sdm_no_pool", p7) if k in v]
    best = max(rows, key=lambda k: statistics.fmean(metric(v[k], "All"))) if rows else None
    claim("ablation_order", [(p7, "row5_sdm_no_pool", "All"), ("row5_sdm_no_pool", "row1_flowe", "All"),
                             (p7, "row1_flowe", "All")], best=best)  # fmt: skip
    claim("subcrop_size", [("subcrops_0.04-0.18", "subcrops_0.54-1.00", "Small"),
                           ("subcrops_0.04-0.18", "subcrops_0.54-1.00", "All")])  # fmt: skip
    return out


def claim_summary(c: dict[str, Any]) -> str:
    """One verdict for a claim: holds if every test holds, contradicted if any is, else not resolved/not run."""
    vals = list(c["verdict"].values())
    if vals == ["not run"]:
        return "not run"
    if any(x == "contradicted" for x in vals):
        return "contradicted"
    if vals and all(x == "holds" for x in vals):
        return "holds"
    return "partly holds" if any(x == "holds" for x in vals) else "not resolved"


def sweep_points(v: dict[str, list[dict[str, Any]]]) -> list[tuple[float, float, str]]:
    """(area lo, area hi, variant) of the subcrop-area sweep, by mean area; row 7 (0.05-0.30) joins it."""
    pts = []
    for key in v:
        if key.startswith("subcrops_"):
            lo, hi = (float(x) for x in key.removeprefix("subcrops_").split("-"))
            pts.append((lo, hi, key))
    if pts and "row7_poodle" in v:
        pts.append((0.05, 0.3, "row7_poodle"))
    return sorted(pts, key=lambda p: p[0] + p[1])


# ------------------------------------------------------------------------------------------------ subcrop hits

HIT_SIZE_EDGES = (0.0, 0.01, 0.05, 1.0)  # object size as a share of the global crop: < 1 %, 1-5 %, > 5 %


def subcrop_hits(data: Path, ranges: Sequence[tuple[float, float]], subcrops: int = 1024) -> list[dict[str, Any]]:
    """The paper's App. C analysis on the study's own train label maps, once per subcrop-area range of the study:
    how often a subcrop is "hit" by (>= 5 % covered by) a foreground object vs the object's pixel share, by object
    size. Same global crops and seed for every range (`poodle analyze subcrops` with --subcrops)."""
    from poodle.data.segmentation import build_segmentation_dataset
    from poodle.evaluation.groups import label_maps
    from poodle.evaluation.subcrop_hits import PAPER_FOREGROUND, foreground_indices, subcrop_hit_analysis

    ds = build_segmentation_dataset("synthdrive", data, "train")
    classes = list(ds.info.classes)
    maps = list(label_maps(ds))
    rows = []
    for lo, hi in ranges:
        r = subcrop_hit_analysis(maps, classes, foreground_indices(classes, PAPER_FOREGROUND),
                                 subcrop_area=(lo, hi), subcrops_per_crop=subcrops, seed=0)  # fmt: skip
        cells = []
        for a, b in zip(HIT_SIZE_EDGES[:-1], HIT_SIZE_EDGES[1:]):
            sel = (r.sizes >= a) & (r.sizes < b)
            pix = float(r.sizes[sel].mean()) if sel.any() else math.nan
            hit = float(r.hits[sel].mean()) if sel.any() else math.nan
            cells.append({"size": [a, b], "pairs": int(sel.sum()), "pixel": pix, "hit": hit,
                          "gain": hit / pix if sel.any() and pix > 0 else math.nan})  # fmt: skip
        rows.append(
            {
                "area": [lo, hi],
                "bins": cells,
                "foreground": r.foreground,
                "images": r.images,
            }
        )
    return rows


def subcrop_hits_table(rows: list[dict[str, Any]]) -> str:
    heads = [f"objects {100 * a:g}–{100 * b:g} % of the crop" for a, b in zip(HIT_SIZE_EDGES[:-1], HIT_SIZE_EDGES[1:])]
    head = f"| Subcrop area | {' | '.join(heads)} |\n|---|{'---|' * len(heads)}"
    lines = [head]
    for r in rows:
        cells = [f"hit {100 * c['hit']:.1f} % / pixels {100 * c['pixel']:.2f} % (x{c['gain']:.1f})"
                 if c["pairs"] else "-" for c in r["bins"]]  # fmt: skip
        lines.append(f"| {r['area'][0]:.2f} – {r['area'][1]:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ tables


def extra_readout_view(v: dict[str, list[dict[str, Any]]], name: str) -> dict[str, list[dict[str, Any]]]:
    """The records as the further readout `name` scored them (runs without it left out)."""
    out = {}
    for key, recs in v.items():
        got = [{**r, **r["extra_readouts"][name]} for r in recs if name in r.get("extra_readouts", {})]
        if got:
            out[key] = got
    return out


def noise_text(v: dict[str, list[dict[str, Any]]]) -> str:
    """The median seed-to-seed std over variants and the difference 3 seeds can resolve with it."""
    lines = []
    for group in ("All", "Small"):
        stds = [mean_std(metric(r, group))[1] for r in v.values() if len(r) > 1]
        if not stds:
            return "One seed per variant: no seed noise to measure."
        n = min(len(r) for r in v.values() if len(r) > 1)
        med = statistics.median(stds)
        lines.append(f"- {group} mIoU: median std over variants {100 * med:.2f} points (range {100 * min(stds):.2f}–"
                     f"{100 * max(stds):.2f}); two variants with that std and {n} seeds each differ significantly "
                     f"(Welch, p < {ALPHA}) from {100 * detectable_difference(med, n):.2f} points.")  # fmt: skip
    return "\n".join(lines)


def group_table(v: dict[str, list[dict[str, Any]]], kind: str = "mIoU") -> str:
    head = f"| Variant | In the paper | Seeds | {' | '.join(GROUPS)} |\n|---|---|---|{'---|' * len(GROUPS)}"
    rows = [f"| {r[0]['label']} | {r[0]['paper']} | {len(r)} | " + " | ".join(pm(metric(r, g, kind)) for g in GROUPS)
            + " |" for r in v.values()]  # fmt: skip
    return "\n".join([head, *rows])


def per_class_table(v: dict[str, list[dict[str, Any]]]) -> str:
    first = next(iter(v.values()))[0]
    classes = first["classes"]
    head = f"| Variant | {' | '.join(classes)} |\n|---|{'---|' * len(classes)}"
    rows = []
    for recs in v.values():
        cells = []
        for i in range(len(classes)):
            vals = [r["metrics"]["per_class_iou"][i] for r in recs]
            vals = [x for x in vals if x is not None and not (isinstance(x, float) and math.isnan(x))]
            cells.append(f"{100 * statistics.fmean(vals):.1f}" if vals else "-")
        rows.append(f"| {recs[0]['label']} | " + " | ".join(cells) + " |")
    return "\n".join([head, *rows])


def sweep_table(v: dict[str, list[dict[str, Any]]]) -> str:
    pts = sweep_points(v)
    head = "| Subcrop area | Variant | Small | Large | All |\n|---|---|---|---|---|"
    rows = [f"| {lo:.2f} – {hi:.2f} | {v[k][0]['label']} | {pm(metric(v[k], 'Small'))} | "
            f"{pm(metric(v[k], 'Large'))} | {pm(metric(v[k], 'All'))} |" for lo, hi, k in pts]  # fmt: skip
    return "\n".join([head, *rows])


def diagnostics_table(v: dict[str, list[dict[str, Any]]]) -> str:
    head = ("| Variant | Readout features | Final loss | Dense std | Pooled std | Flow-warped cos | Same-place cos | "
            "Shuffled cos | Warped cos, moving px | Same-place cos, moving px | Dense head: warped | "
            "Dense head: same place | Pretrain s | Readout s |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip

    def col(recs, getter, digits=3, scale=1.0):
        vals = [getter(r) for r in recs]
        vals = [x for x in vals if x is not None and not math.isnan(x)]
        return pm(vals, scale, digits) if vals else "-"

    rows = []
    for recs in v.values():
        p = lambda key: lambda r: r.get("pretrain", {}).get(key)  # noqa: E731
        a = lambda key: lambda r: r.get("alignment", {}).get(key)  # noqa: E731
        h = lambda key: lambda r: r.get("alignment_dense_head", {}).get(key)  # noqa: E731
        rows.append(
            f"| {recs[0]['label']} | {recs[0].get('features')} | {col(recs, p('loss'))} | {col(recs, p('dense_std'))} "
            f"| {col(recs, p('pooled_std'))} | {col(recs, a('warped'))} | {col(recs, a('same_place'))} | "
            f"{col(recs, a('shuffled'))} | {col(recs, a('warped_moving'))} | {col(recs, a('same_place_moving'))} | "
            f"{col(recs, h('warped'))} | {col(recs, h('same_place'))} | "
            f"{col(recs, lambda r: r.get('pretrain_seconds'), 0)} | "
            f"{col(recs, lambda r: r.get('readout_seconds'), 0)} |"
        )
    return "\n".join([head, *rows])


# ------------------------------------------------------------------------------------------------ figures


GROUP_COLORS = {"All": (31, 119, 180), "Small": (255, 127, 14), "Large": (44, 160, 44), "Rare": (214, 39, 40),
                "Common": (148, 103, 189)}  # fmt: skip


GROUP_MEANING = {
    "All": "all classes",
    "Small": "classes averaging <= 1 % of the pixels of the images they occur in",
    "Large": "classes averaging > 1 %",
    "Rare": "classes in <= 20 % of train images",
    "Common": "classes in > 20 %",
}


def bar_chart(
    v: dict[str, list[dict[str, Any]]],
    groups: Sequence[str] = ("All", "Small", "Large"),
    title: str = "SynthDrive study: linear-readout mIoU by class group, per pretraining variant",
):
    """Grouped bars (one group per variant, one bar per class group) with +-1 std error bars and seed dots."""
    from PIL import Image, ImageDraw

    from poodle.figure_layout import font, swatches, titled

    f = font(13)
    n = len(v)
    bar = 20
    slot = (bar + 6) * len(groups) + 24
    left, top, bottom, right = 56, 10, 66, 16
    width, height = left + right + slot * n, 400
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    ph = height - top - bottom
    ymax = max([max(metric(r, g)) for r in v.values() for g in groups] + [0.05])
    ymax = math.ceil(ymax * 20) / 20  # next 5 points

    def y(val: float) -> float:
        return top + (1.0 - val / ymax) * ph

    for k in range(int(round(ymax * 20)) + 1):
        val = k / 20
        d.line([left, y(val), left + slot * n, y(val)], fill=(225, 225, 225))
        d.text((left - 8 - f.getlength(f"{100 * val:.0f}"), y(val) - 8), f"{100 * val:.0f}", fill="black", font=f)
    d.line([left, top, left, y(0)], fill="black")
    axis = Image.new("RGB", (ph, 18), "white")  # y-axis title, drawn horizontally and rotated
    ImageDraw.Draw(axis).text(((ph - f.getlength("mIoU (%)")) / 2, 1), "mIoU (%)", fill="black", font=f)
    img.paste(axis.rotate(90, expand=True), (2, top))
    for i, recs in enumerate(v.values()):
        x0 = left + i * slot + 12
        for j, g in enumerate(groups):
            vals = metric(recs, g)
            m, s = mean_std(vals)
            bx = x0 + (bar + 6) * j
            d.rectangle([bx, y(m), bx + bar, y(0)], fill=GROUP_COLORS[g])
            if not math.isnan(s):
                d.line([bx + bar // 2, y(m + s), bx + bar // 2, y(max(m - s, 0.0))], fill="black", width=1)
            for val in vals:
                c = bx + bar // 2
                d.ellipse([c - 3, y(val) - 3, c + 3, y(val) + 3], outline="black")
        label = recs[0]["label"]
        for li, part in enumerate(_wrap(label, max(8, slot // 7))):
            d.text((x0, y(0) + 6 + 15 * li), part, fill="black", font=f)
    legend = swatches([(f"{g}: {GROUP_MEANING.get(g, g)}", GROUP_COLORS[g]) for g in groups], width, 13, "bars:")
    notes = ["Bar = mean over seeds; vertical line = ±1 standard deviation; circles = the individual seeds."]
    return titled(img, title, below=[legend], notes=notes)


def _wrap(text: str, width: int) -> list[str]:
    lines, cur = [], ""
    for word in text.split():
        if cur and len(cur) + 1 + len(word) > width:
            lines.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}".strip()
    return [*lines, cur] if cur else lines


# ------------------------------------------------------------------------------------------------ report


def group_stats(recs: list[dict[str, Any]], kind: str = "mIoU") -> dict[str, dict[str, Any]]:
    """{group: {mean, std, values}} of one variant's runs, as summary.json stores them."""
    return {g: dict(zip(("mean", "std"), mean_std(metric(recs, g, kind))), values=metric(recs, g, kind))
            for g in GROUPS}  # fmt: skip


def claims_lines(tested: list[dict[str, Any]]) -> list[str]:
    """The numbered Markdown list of tested claims: one verdict per claim, one line per test."""
    lines = []
    for i, c in enumerate(tested, 1):
        lines += [f"{i}. {c['text']} — **{claim_summary(c)}**",
                  *[f"   - {r} — {val}" for r, val in zip(c["reading"], c["verdict"].values())],
                  *[f"   - {r}" for r in c["reading"][len(c["verdict"]):]], ""]  # fmt: skip
    return lines


def summarize(out: Path, plan_variants: Sequence[str]) -> dict[str, Any]:
    v = by_variant(load_jobs(out), plan_variants)
    variants = {}
    for key, recs in v.items():
        variants[key] = {"label": recs[0]["label"], "paper": recs[0]["paper"], "seeds": [r["seed"] for r in recs],
                         "mIoU": group_stats(recs, "mIoU"), "Acc": group_stats(recs, "Acc")}  # fmt: skip
    return {"variants": variants, "claims": claims(v), "grouped": v}


def write_report(out: str | Path, plan, wall_seconds: float | None = None) -> dict[str, Any]:
    out = Path(out)
    # Wall time of every invocation that ran jobs (a continued or extended study adds one); --report-only adds none.
    prev = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
    runs = list(prev.get("wall_seconds_runs") or ([prev["wall_seconds"]] if prev.get("wall_seconds") else []))
    if wall_seconds is not None:
        runs.append(wall_seconds)
    wall_seconds = sum(runs) if runs else None
    wall_text = (
        ""
        if wall_seconds is None
        else f" Wall time {wall_seconds / 60:.1f} min"
        + (f" over {len(runs)} invocations ({', '.join(f'{r / 60:.1f}' for r in runs)} min)." if len(runs) > 1 else ".")
    )
    s = summarize(out, plan.variants)
    v = s.pop("grouped")
    if not v:
        raise ValueError(f"no finished jobs under {out / 'runs'}")
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    main_readout = " ".join(plan.readout_overrides) or "readout_synthdrive_cpu as shipped"
    bar_chart(v, title=f"SynthDrive study: linear-readout mIoU by class group ({main_readout})").save(
        figures / "study_miou.png")  # fmt: skip
    sweep = {k: v[k] for _, _, k in sweep_points(v)}
    if sweep:
        title = "Subcrop-area sweep (the paper's Table 5): linear-readout mIoU by class group"
        bar_chart(sweep, ("All", "Small", "Large"), title).save(figures / "subcrop_sweep.png")
    lines = [
        f"# SynthDrive study ({plan.name})",
        "",
        f"{len(v)} variants x up to {plan.seeds} seeds; {plan.pretrain_steps} pretraining steps of 8 pairs at 64x128 "
        f"(ResNet-18) on a fixed pool of {plan.pairs} pairs; linear readout ({plan.readout_steps} steps) on "
        f"{plan.train_images} train / {plan.val_images} val images"
        + (f" (`{' '.join(plan.readout_overrides)}`)" if plan.readout_overrides else "")
        + ". Values are mean ± std over seeds, in %."
        + (f" Config overrides for every pretrained variant: `{' '.join(plan.overrides)}`." if plan.overrides else "")
        + wall_text,
        "",
        "## mIoU (Table 3/4 layout)",
        "",
        group_table(v, "mIoU"),
        "",
        "## Pixel accuracy by class group (Table 6 layout)",
        "",
        group_table(v, "Acc"),
        "",
        "## Seed noise",
        "",
        noise_text(v),
        "",
        "## Claims",
        "",
    ]
    lines += claims_lines(s["claims"])
    if sweep:
        lines += ["## Subcrop area (Table 5 layout)", "", sweep_table(v), ""]
    for name, overrides in plan.extra_readouts:
        ve = extra_readout_view(v, name)
        if not ve:
            continue
        tested = claims(ve)
        s.setdefault("extra_readouts", {})[name] = {
            "claims": tested,
            "variants": {k: {"mIoU": group_stats(r)} for k, r in ve.items()},
        }
        title = f"SynthDrive study, readout '{name}' ({' '.join(overrides)}): linear-readout mIoU by class group"
        bar_chart(ve, title=title).save(figures / f"study_miou_{name}.png")
        lines += [f"## Readout `{name}` (`{' '.join(overrides)}`): the same runs read out again", "",
                  f"Figure: `figures/study_miou_{name}.png`.", "",
                  group_table(ve, "mIoU"), "", noise_text(ve), "", f"Claims on the `{name}` readout:", "",
                  *claims_lines(tested)]  # fmt: skip
    data = out / "data" / "synthdrive"
    if (data / "meta.json").is_file():
        ranges = [(0.02, 0.03)] + [(lo, hi) for lo, hi, _ in sweep_points(v)]
        hits = subcrop_hits(data, ranges)
        s["subcrop_hits"] = hits
        lines += [
            "## Subcrop hits on the study's train images (the paper's App. C)",
            "",
            f"How often a subcrop is hit (>= 5 % covered) by a foreground object ({', '.join(hits[0]['foreground'])}) "
            "against the object's share of the global crop's pixels, per object size, on the "
            f"{hits[0]['images']} labelled train images; 2 global crops (area 0.16–0.45) per image, 1024 subcrops "
            "each. 0.02–0.03 is the paper's App. C setting; the other rows are the study's subcrop ranges.",
            "",
            subcrop_hits_table(hits),
            "",
        ]
    lines += [
        "## Diagnostics",
        "",
        "Final pretraining loss and feature std (collapse check); cosine between a frame's readout features and the "
        "other frame's features at the flow-moved place, at the same place, and at a random place "
        "(`poodle.evaluation.feature_alignment`), also over the pixels that move >= 1 feature-map pixel; the same "
        "for the dense loss's own space (online prediction of a vs target projection of b).",
        "",
        diagnostics_table(v),
        "",
        "## Per-class IoU (mean over seeds)",
        "",
        per_class_table(v),
        "",
        "Figures: `figures/study_miou.png`" + (", `figures/subcrop_sweep.png`" if sweep else "") + "; per-run readout "
        "figures in `runs/<variant>/seed0/readout/figures`.",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    s["plan"] = plan.to_dict()
    s["wall_seconds"] = wall_seconds
    s["wall_seconds_runs"] = runs
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(s, indent=1, default=float))
    tmp.replace(out / "summary.json")
    return s
