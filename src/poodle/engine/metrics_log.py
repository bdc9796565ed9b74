"""Run observability on rank 0: JSONL metrics (one object per logged step), TensorBoard scalars, a tqdm bar."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm


class MetricsLog:
    def __init__(self, run_dir: Path, enabled: bool, start_step: int, stop_step: int, tensorboard: bool = True):
        self.enabled = enabled
        self._file = None
        self._tb = None
        self._bar = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        _drop_records_after(run_dir / "metrics.jsonl", start_step)
        self._file = open(run_dir / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115 - lives for the run
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=start_step)
        self._bar = tqdm(
            total=stop_step, initial=start_step, desc="pretrain", unit="step", dynamic_ncols=True,
            disable=not sys.stderr.isatty(), file=sys.stderr,
        )  # fmt: skip

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _plain(v) for k, v in values.items()}}
        self._file.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
        if self._bar is not None and self._bar.disable:  # no TTY: a plain progress line instead of a bar
            keys = ("loss", "dense", "pooled", "lr", "pairs_per_s")
            print(f"step {step}: " + ", ".join(f"{k} {record[k]:.4g}" for k in keys if k in record), flush=True)

    def advance(self, n: int = 1, **postfix: float) -> None:
        if self._bar is not None and not self._bar.disable:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._file is not None:
            self._file.close()


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    return v


def _drop_records_after(path: Path, step: int) -> None:
    """Resuming at `step` (e.g. from an older checkpoint after a crash): the records of later steps describe a
    trajectory that no longer exists and would appear twice in every curve, so drop them, and a line torn by a
    crash mid-write with them. The file is replaced atomically."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            record_step = int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue  # torn or foreign line
        if record_step <= step:
            kept.append(line + "\n")
    if len(kept) != len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept))
        tmp.replace(path)
