"""`poodle demo`: the README's main job end to end on SynthDrive (no download, no GPU; about 10 minutes on 2 cores).

1. generate the `small` SynthDrive preset in the BDD100K layout (OUT/synthdrive);
2. pretrain PooDLe (ResNet-18 + SDM, the `synthdrive` config, ground-truth flow) into OUT/pretrain;
3. linear readout of the pretrained backbone (SDM features, `readout_synthdrive_cpu`) into OUT/readout_poodle,
   and of a randomly initialised ResNet-18 ("Scratch", dilated layer4) into OUT/readout_scratch;
4. print the Table 1 / Table 3-style rows side by side and where the figures are.

`--quick` runs the same pipeline with tens of steps (a smoke test, a minute or two).
"""

from __future__ import annotations

import argparse
import sys
import time

from poodle.cli import UserError

FULL = {"pretrain_steps": 150, "readout_steps": 200, "scratch": True}
QUICK = {"pretrain_steps": 4, "readout_steps": 20, "scratch": True}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--seed", type=int, default=0, help="world and training seed (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--quick", action="store_true", help="tens of steps instead of hundreds (smoke test)")
    p.add_argument("--no-scratch", action="store_true", help="skip the random-init (Scratch) comparison readout")


def run(args: argparse.Namespace) -> int:
    from poodle.config import load_config
    from poodle.data.synthdrive import generate_dataset
    from poodle.engine.pair_sources import build_pair_source
    from poodle.engine.train import pretrain
    from poodle.evaluation.config import load_readout_config
    from poodle.evaluation.readout import run_readout
    from poodle.evaluation.tables import table1, table3_rows
    from poodle.output_dir import OutputDirError, claim_output_dir

    plan = dict(QUICK if args.quick else FULL)
    if args.no_scratch:
        plan["scratch"] = False
    try:  # --overwrite replaces only a folder an earlier `poodle demo` made (its marker file), never anything else
        out = claim_output_dir(args.out, "demo", overwrite=args.overwrite)
    except OutputDirError as e:
        raise UserError(str(e)) from e
    t0 = time.perf_counter()
    stages = 4 if plan["scratch"] else 3

    def elapsed() -> str:
        return f"{time.perf_counter() - t0:.0f} s"

    # 1. data
    data = out / "synthdrive"
    print(f"[1/{stages}] SynthDrive: generating the 'small' preset into {data}", flush=True)
    meta = generate_dataset(data, preset="small", seed=args.seed, overwrite=True, preview=True)
    print(f"      done at {elapsed()}: {meta['counts']}", flush=True)
    print((data / "stats.md").read_text(), flush=True)  # the paper's Table 10-style class statistics

    # 2. pretraining: the cosine horizon is set to the demo's length so the schedule completes.
    steps = plan["pretrain_steps"]
    cfg = load_config("synthdrive", [f"data.root={data}", f"run.seed={args.seed}", "run.log_every=10",
                                     "run.device=cpu", "data.workers=1"])  # fmt: skip
    videos = int(meta["counts"]["videos"]["train"])
    epochs = steps * cfg.optim.batch_size / videos
    cfg = load_config("synthdrive", [f"data.root={data}", f"run.seed={args.seed}", "run.log_every=10",
                                     "run.device=cpu", "data.workers=1", f"optim.schedule_epochs={epochs}",
                                     f"optim.stop_epochs={epochs}",
                                     f"optim.warmup_epochs={min(cfg.optim.warmup_epochs, epochs / 10)}"])  # fmt: skip
    print(f"[2/{stages}] pretraining PooDLe ({cfg.model.arch} + SDM, {cfg.data.resolution[0]}x"
          f"{cfg.data.resolution[1]} crops, batch {cfg.optim.batch_size}) for {steps} steps into {out / 'pretrain'}",
          flush=True)  # fmt: skip
    source, flow = build_pair_source(cfg)
    summary = pretrain(cfg, out / "pretrain", source, flow, stop_step=steps, resume=False)
    if summary.get("interrupted") is not None:  # Ctrl-C / SIGTERM: no readout tables for an unfinished model
        print(f"poodle demo: interrupted during pretraining at step {summary['step']} of {steps} (saved in "
              f"{out / 'pretrain'}); no readout was run. Run `poodle demo --out {out} --overwrite` to start over.",
              file=sys.stderr, flush=True)  # fmt: skip
        return 130
    loss = summary.get("loss", float("nan"))
    print(f"      done at {elapsed()}: step {summary['step']}, loss {loss:.4f}", flush=True)

    # 3. readouts
    rcfg = load_readout_config("readout_synthdrive_cpu", [f"seed={args.seed}"])
    runs = [("PooDLe", str(out / "pretrain"), None, out / "readout_poodle")]
    if plan["scratch"]:
        runs.append(("Scratch", "random", cfg.model.arch, out / "readout_scratch"))
    results = []
    for i, (label, weights, arch, folder) in enumerate(runs):
        print(f"[{3 + i}/{stages}] linear readout of {label} ({plan['readout_steps']} steps) into {folder}", flush=True)
        r = run_readout(weights, "synthdrive", data, rcfg, folder, steps=plan["readout_steps"], arch=arch,
                        method={"name": label, "arch": cfg.model.arch,
                                "pretrain": "SynthDrive" if label == "PooDLe" else "-"})  # fmt: skip
        results.append(r)
        m = r["metrics"]
        print(f"      done at {elapsed()}: mIoU {100 * m['miou']:.1f}, aAcc {100 * m['aacc']:.1f}", flush=True)

    # 4. report
    labels = [r[0] for r in runs]
    print(f"\nSynthDrive linear readout, val split ({len(labels)} backbones), total {elapsed()}:\n")
    print(table1(results, labels) + "\n")
    print("mIoU by class group (Table 3 layout):\n" + table3_rows(results, labels) + "\n")
    print("Pixel accuracy by class group (Table 6 layout):\n" + table3_rows(results, labels, "Acc") + "\n")
    for label, _, _, folder in runs:
        print(f"{label}: {folder / 'results.json'}, {folder / 'table.md'}, figures in {folder / 'figures'}")
    print(f"data preview: {data / 'preview.png'}; class statistics: {data / 'stats.md'}")
    return 0
