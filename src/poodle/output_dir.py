"""Output folders: checked before any work, and only ever replaced when poodle can tell it made them.

Every folder poodle creates as a whole (a demo, a SynthDrive dataset, a shards folder, a study, a run folder) holds
a marker file, `.poodle-output.json`, naming what it is. `--overwrite` deletes a folder only when its marker says
poodle made it as that kind of output; a folder of anything else (a thesis, a home directory, another tool's
results) is refused in one line that names what is in it, and nothing is touched.

- `check_writable(path)`: the folder can be created and written (read-only mounts, a path under a file), before
  any model is built or any frame is decoded.
- `check_replaceable(path, kind, overwrite)`: the refusal rules, without deleting anything (for writers that build
  into a temporary folder and swap it in).
- `claim_output_dir(path, kind, overwrite)`: check, delete a replaceable folder, create and mark it.
- `check_run_dir(path)`: a pretraining run folder is empty, or a poodle run to resume; never someone else's files.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import time
from pathlib import Path

MARKER = ".poodle-output.json"
# What a pretraining run writes at its top level (a run folder made before markers existed is recognised by these).
RUN_FILES = ("config.yaml", "last.pt", "metrics.jsonl", "tensorboard")
# Files a batch scheduler may create in the run folder before poodle starts (`#SBATCH --output=RUN/%j.out`).
SCHEDULER_LOG_SUFFIXES = (".out", ".err", ".log")


class OutputDirError(ValueError):
    """The output folder cannot be used; the message names it and what to do."""


def os_error_text(e: OSError) -> str:
    """'Permission denied' / 'Read-only file system' / ...: the errno text without Python's decorations."""
    return e.strerror or str(e)


def read_marker(path: str | Path) -> dict | None:
    """The marker poodle wrote in `path`, or None (no marker, or not one poodle could have written)."""
    try:
        data = json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "kind" in data else None


def write_marker(path: str | Path, kind: str) -> None:
    (Path(path) / MARKER).write_text(json.dumps({"kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")


def check_writable(path: str | Path) -> Path:
    """Raise `OutputDirError` unless `path` is (or can be created as) a folder this process can write into.

    Only permissions are read (`os.access` reports read-only file systems too); nothing is created.
    """
    out = Path(path).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"{out} exists and is not a folder; choose another output folder")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputDirError(f"cannot create {out}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only_fs(existing) else "permission denied"
        what = "write to" if existing == out else f"create {out}: cannot write to"
        raise OutputDirError(f"cannot {what} {existing} ({reason}); choose another output folder")
    return out


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def _listing(out: Path) -> list[str]:
    try:
        return sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    except OSError as e:
        raise OutputDirError(f"cannot read {out}: {os_error_text(e)}") from e


def _shown(contents: list[str]) -> str:
    names = [c for c in contents if c != MARKER]
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")


def check_replaceable(
    path: str | Path, kind: str, overwrite: bool = False, legacy: tuple[str, tuple[str, ...]] | None = None
) -> bool:
    """Raise `OutputDirError` unless `path` may be written as a `kind` output; True when a previous one is replaced.

    Missing or empty: fine. Non-empty: only with `overwrite`, and only when its marker says it is a poodle `kind`.
    `legacy = (required, patterns)` also accepts an unmarked folder written before markers existed, but only when
    it holds `required` and every entry matches one of `patterns` (the exact set of names that writer produces).
    """
    out = check_writable(path)
    contents = _listing(out)
    if not contents:
        return False
    if not overwrite:
        raise OutputDirError(f"{out} exists and is not empty; pass --overwrite to replace a previous poodle {kind} "
                             "there, or choose another folder")  # fmt: skip
    marker = read_marker(out)
    if marker is None and legacy is not None:
        required, patterns = legacy
        if required in contents and all(any(fnmatch.fnmatch(c, p) for p in patterns) for c in contents):
            return True
    if marker is None or marker.get("kind") != kind:
        made = f"a poodle {marker['kind']} output" if marker else f"not made by poodle (no {MARKER})"
        raise OutputDirError(f"refusing to delete {out}: it is {made} and holds {_shown(contents)}; move it or "
                             "choose another folder")  # fmt: skip
    return True


def claim_output_dir(path: str | Path, kind: str, overwrite: bool = False) -> Path:
    """Make `path` an empty, marked `kind` output folder, or raise `OutputDirError` without touching anything."""
    out = check_writable(path)
    if check_replaceable(out, kind, overwrite):
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_marker(out, kind)
    except OSError as e:
        raise OutputDirError(f"cannot write to {out}: {os_error_text(e)}") from e
    return out


def check_run_dir(path: str | Path, kind: str = "pretrain") -> Path:
    """A `kind` run folder must be new, empty, or a poodle run of that kind (to resume): never a folder of other
    files. `kind` is "pretrain" (`poodle pretrain`) or "flow_train" (`poodle flow train`).

    poodle writes `config.yaml`, `last.pt`, `metrics.jsonl`, ...; in a folder it did not make those names could be
    someone else's files, so they are refused before any work. Scheduler logs (`*.out`, `*.err`, `*.log`) may be
    there already. Nothing is created here (the loop creates and marks the folder on rank 0).
    """
    out = check_writable(path)
    contents = _listing(out)
    marker = read_marker(out)
    if marker is not None:
        if marker.get("kind") != kind:
            what = "a pretraining" if kind == "pretrain" else f"a {kind}"
            raise OutputDirError(f"{out} is a poodle {marker['kind']} output, not {what} run folder; "
                                 "choose another --out")  # fmt: skip
        return out
    if "config.yaml" in contents and ("last.pt" in contents or "metrics.jsonl" in contents):
        return out  # a run folder from a poodle version before markers
    foreign = [c for c in contents if not c.endswith(SCHEDULER_LOG_SUFFIXES) and not fnmatch.fnmatch(c, ".*.pt.*.tmp")]
    if foreign:
        raise OutputDirError(f"{out} holds files poodle did not write ({_shown(foreign)}); a run needs an empty or "
                             "new folder, or a poodle run folder to resume")  # fmt: skip
    return out
