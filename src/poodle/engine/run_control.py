"""Pieces every training loop shares: stopping cleanly on a signal, and cleaning up after a killed checkpoint write.

Used by the pretraining loop (`poodle.engine.train`) and the optical-flow trainer (`poodle.flowtrain.train`).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import torch

from poodle.engine.distributed import DistInfo, all_reduce_mean
from poodle.engine.health import state_nonfinite


class StopRequest:
    """SIGTERM / SIGUSR1 (preemption, SLURM's pre-kill signal) and Ctrl-C (SIGINT) ask the loop to finish the
    current step, checkpoint it and exit cleanly; a second Ctrl-C aborts at once (KeyboardInterrupt)."""

    def __init__(self, announce: bool = True) -> None:
        self.signal: int | None = None
        self.announce = announce
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside a test runner thread): signals stay default
                pass

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        if signum == signal.SIGINT and self.signal is not None:
            raise KeyboardInterrupt  # the second Ctrl-C: the user does not want to wait for the save
        self.signal = signum
        if signum == signal.SIGINT and self.announce:
            print("\ninterrupted: saving after this step (Ctrl-C again to abort without saving)", file=sys.stderr,
                  flush=True)  # fmt: skip

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def stop_after_step(stop: StopRequest, is_log: bool, is_ckpt: bool, info: DistInfo) -> bool:
    """Whether this step ends the run on a signal. It is acted on where the ranks already meet (logged or checkpoint
    steps) so that all of them save the same step; a single process acts on it after the current step. Read once
    per step, so a signal landing between the save decision and the exit check waits for the next step."""
    return stop.signal is not None and (is_log or is_ckpt or not info.enabled)


def checked_step_flags(
    diverged: torch.Tensor, state: torch.nn.Module, stop: StopRequest, info: DistInfo
) -> tuple[bool, bool, bool]:
    """The one host sync of a checked (logged / checkpoint / stopping) step, over all ranks: (non-finite loss or
    gradient since the last check, non-finite parameters or buffers in `state`, a stop request on any rank)."""
    device = diverged.device
    flags = torch.stack([diverged.float(), state_nonfinite(state).to(device).float(),
                         torch.tensor(float(stop.signal is not None), device=device)])  # fmt: skip
    loss_bad, state_bad, stop_any = (all_reduce_mean(flags, info) > 0).tolist()
    return loss_bad, state_bad, stop_any


def announce_stop(stop: StopRequest, step: int, checkpoint: Path, info: DistInfo) -> None:
    if info.is_main:
        print(f"received signal {stop.signal or 'from another rank'}: saved step {step} to {checkpoint}; exiting",
              flush=True)  # fmt: skip


def ignore_stop_signals_in_worker(worker_id: int) -> None:  # noqa: ARG001 - DataLoader's worker_init_fn
    """DataLoader workers ignore SIGTERM / SIGINT / SIGUSR1. A scheduler (or `timeout`, or Ctrl-C in a terminal)
    signals the whole process group; PyTorch's workers die on SIGTERM, and the main process then fails with
    "DataLoader worker ... killed" instead of saving the step. The main process alone decides to stop; its workers
    end with it."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete the partial checkpoint files a killed write left behind (`atomic_save`'s `.<name>.*.tmp`), which
    nothing else ever removes (up to a full checkpoint each). Only that pattern, only in the run folder."""
    if not run_dir.is_dir():
        return
    for tmp in run_dir.glob(".*.pt.*.tmp"):
        try:
            size = tmp.stat().st_size
            tmp.unlink()
            print(f"removed {tmp.name} ({size / 2**20:.0f} MiB), a checkpoint write that never finished", flush=True)
        except OSError:
            pass
