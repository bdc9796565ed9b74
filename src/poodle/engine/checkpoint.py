"""Atomic checkpoints that load with `torch.load(weights_only=True)`.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts — nothing that needs pickled classes —
so it can be loaded safely and inspected without poodle installed. It is written to a temporary file in the
same folder, flushed to disk, then renamed over the destination: a crash mid-write never leaves a truncated
`last.pt` behind.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


class CheckpointError(RuntimeError):
    pass


def atomic_save(obj: Any, path: str | Path) -> None:
    """Write `obj` to `path` so that `path` is either the old file or the complete new one, never a torn one.

    A failed write (most often a full disk, which torch reports as an opaque "unexpected pos" from its zip
    writer) raises `CheckpointError` naming the file and the free space left, and leaves no temporary behind.
    """
    path = Path(path)
    from poodle.output_dir import OutputDirError, check_writable

    try:
        check_writable(path.parent)  # a read-only folder or a path under a file, named as such
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OutputDirError as e:
        raise CheckpointError(f"cannot write {path}: {e}") from e
    except OSError as e:
        raise CheckpointError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        free = _free_space(path.parent)  # measured before the partial file is removed: what the write ran into
        Path(tmp).unlink(missing_ok=True)
        if not isinstance(e, Exception):  # Ctrl-C mid-write: let the interrupt through unchanged
            raise
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise CheckpointError(
            f"could not write checkpoint {path}: {reason} ({free} free on its filesystem when the write failed; "
            f"the previous {path.name}, if any, is untouched)"
        ) from e


def _free_space(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "unknown space"
    return f"{free / 2**30:.1f} GiB" if free >= 2**30 else f"{free / 2**20:.0f} MiB"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    ckpt = safe_load(path, map_location, what="checkpoint")
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} is not a poodle checkpoint (a dict was expected, got {type(ckpt).__name__})")
    return ckpt


def safe_load(path: str | Path, map_location: str | torch.device = "cpu", what: str = "file", mmap: bool = False):
    """`torch.load(weights_only=True)` with one-line reasons (`CheckpointError`): empty, truncated, not a torch
    file, or pickled objects, which are refused and never run. Every weight file poodle reads goes through here."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            raise CheckpointError(f"cannot load {what} {path}: the file is empty (0 bytes), so the write that "
                                  "made it never finished; use an earlier one")  # fmt: skip
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except CheckpointError:
        raise
    except OSError as e:
        raise CheckpointError(f"cannot read {what} {path}: {e.strerror or e}") from e
    except Exception as e:  # truncated file, wrong format, or pickled objects that are not allowed
        raise CheckpointError(f"cannot load {what} {path}: {_load_failure_reason(e, size, _is_zip(path))}") from e


def _load_failure_reason(e: Exception, size: int, zip_file: bool) -> str:
    """torch's message, reduced to what the user can act on. Its advice to pass `weights_only=False` (which would
    run whatever code the pickle names) is never passed on."""
    text = str(e)
    unsafe = re.search(r"unsupported GLOBAL ([\w.]+)|Unsupported global: GLOBAL ([\w.]+)", text, re.IGNORECASE)
    markers = ("central directory", "zip archive", "unexpected EOF", "pickle data", "Unsupported operand")
    if not unsafe and (not zip_file or any(m in text for m in markers)):
        return (
            f"the file ({size} bytes) is truncated or not a PyTorch checkpoint; if a write was interrupted, use "
            "an earlier one"
        )
    if unsafe or "Weights only load failed" in text:
        name = (unsafe.group(1) or unsafe.group(2)) if unsafe else "a Python object"
        return (
            f"it holds pickled Python objects ({name}) that poodle will not unpickle, because unpickling can "
            "run code. If it comes from another code base, load it there and "
            "save only its tensors with torch.save(model.state_dict(), PATH)"
        )
    return text.splitlines()[0] if text else type(e).__name__


def _is_zip(path: Path) -> bool:
    """torch.save's format since PyTorch 1.6 is a zip archive."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def rng_state() -> dict[str, Any]:
    """Global RNG states, as plain data (the training loop itself seeds per step; this covers library code)."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),  # noqa: NPY002 - saving the legacy global
        "python": _python_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(_numpy_state_from_plain(state["numpy"]))  # noqa: NPY002
    random.setstate(_python_state_from_plain(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state_to_plain(st: tuple) -> list:
    name, keys, pos, has_gauss, cached = st
    return [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)]


def _numpy_state_from_plain(st: list) -> tuple:
    name, keys, pos, has_gauss, cached = st
    return (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached)


def _python_state_to_plain(st: tuple) -> list:
    version, internal, gauss = st
    return [version, torch.tensor(internal, dtype=torch.int64), gauss]


def _python_state_from_plain(st: list) -> tuple:
    version, internal, gauss = st
    return (version, tuple(int(v) for v in internal.tolist()), gauss)
