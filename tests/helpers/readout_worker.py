"""Run under `torchrun --nproc_per_node 2` by tests/test_readout_ddp.py: a tiny linear readout (random ResNet-18,
gloo on CPU) that writes, per rank, the evidence the test checks: the val images the rank evaluated in each
evaluation pass, its local and all-reduced confusion matrices, its final head weights, the results dict it got back
and the files it wrote."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

import poodle.evaluation.readout as readout
import poodle.evaluation.tables as tables
from poodle.evaluation.config import load_readout_config
from poodle.evaluation.metrics import ConfusionMatrix

CONFIG = "readout_synthdrive_cpu"
OVERRIDES = ["crop_size=[48,96]", "base_size=64", "scale_range=[0.75,1.0]", "batch_size=4", "workers=0",
             "device=cpu", "figures=1", "log_every=1", "eval_every=2"]  # fmt: skip


def main(root: str, out: str, steps: int) -> None:
    cfg = load_readout_config(CONFIG, OVERRIDES)
    evals: list[dict] = [{"names": []}]  # one entry per evaluation pass, closed by its all_reduce
    models, written = [], []

    # The val loader's collate_fn (runs in this process: workers=0) sees every evaluated item.
    orig_first = readout._first

    def first(items):
        evals[-1]["names"].append(items[0]["name"])
        return orig_first(items)

    orig_all_reduce = ConfusionMatrix.all_reduce

    def all_reduce(self):
        evals[-1]["local"] = self.matrix.clone().cpu()
        result = orig_all_reduce(self)
        evals[-1]["reduced"] = self.matrix.clone().cpu()
        evals.append({"names": []})
        return result

    orig_build = readout.build_model

    def build_model(*args, **kwargs):
        models.append(orig_build(*args, **kwargs))
        return models[-1]

    def recorder(fn, arg):  # arg: index of the path argument, None = record the function's name
        def wrapped(*args, **kwargs):
            written.append(fn.__name__ if arg is None else Path(args[arg]).name)
            return fn(*args, **kwargs)

        return wrapped

    orig_write_text = Path.write_text
    readout._first, ConfusionMatrix.all_reduce, readout.build_model = first, all_reduce, build_model
    readout.atomic_save = recorder(readout.atomic_save, 1)
    readout._figures = recorder(readout._figures, None)
    tables.write_results = recorder(tables.write_results, 1)
    orig_replace = Path.replace  # write-then-rename files are recorded under their final name
    Path.write_text = lambda self, *a, **k: (written.append(self.name), orig_write_text(self, *a, **k))[1]
    Path.replace = lambda self, target: (written.append(Path(target).name), orig_replace(self, target))[1]

    results = readout.run_readout("random", "synthdrive", root, cfg, Path(out) / "ro", steps=steps, arch="resnet18",
                                  progress=False)  # fmt: skip
    Path.write_text, Path.replace = orig_write_text, orig_replace
    rank, world = dist.get_rank(), dist.get_world_size()
    head = {k: v.detach().clone().cpu() for k, v in models[0].head.state_dict().items()}
    torch.save({"world_size": world, "evals": evals[:-1], "head": head, "results": results, "written": written,
                "overrides": OVERRIDES}, Path(out) / f"rank{rank}.pt")  # fmt: skip
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
