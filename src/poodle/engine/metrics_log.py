"""Run observability on rank 0: JSONL metrics (one object per logged step), TensorBoard scalars, a tqdm bar."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from poodle.progress import format_duration


class MetricsLog:
    """Without a terminal (a log file, SLURM, `make demo | tee`) the bar becomes plain lines: every logged step's
    values, and in between a heartbeat `step N/M` at step 1 and then at most every `heartbeat_s` seconds, so a
    slow start is never silent."""

    def __init__(self, run_dir: Path, enabled: bool, start_step: int, stop_step: int, tensorboard: bool = True,
                 heartbeat_s: float = 30.0, desc: str = "pretrain"):  # fmt: skip
        self.enabled = enabled
        self._step, self._start, self._stop = start_step, start_step, stop_step
        self._heartbeat_s = heartbeat_s
        self._t0 = self._last_line = time.monotonic()
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
            total=stop_step, initial=start_step, desc=desc, unit="step", dynamic_ncols=True,
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
            self._last_line = time.monotonic()

    def advance(self, n: int = 1, logged: bool = False, **postfix: float) -> None:
        """`n` more steps are done; `logged`: `log` follows for this step (and prints its own line)."""
        self._step += n
        if self._bar is None:
            return
        if not self._bar.disable:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
            return
        now = time.monotonic()
        first = self._step == self._start + n
        if not logged and (first or now - self._last_line >= self._heartbeat_s):
            per_step = (now - self._t0) / max(1, self._step - self._start)
            left = per_step * (self._stop - self._step)
            print(
                f"step {self._step}/{self._stop}: {per_step:.2f} s/step, about {format_duration(left)} left", flush=True
            )
            self._last_line = now

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
