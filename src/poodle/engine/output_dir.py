"""Output folders that `--overwrite` may replace: only those poodle made itself, recognised by a marker file.

`claim_output_dir(path, kind, overwrite)` is called before any work: a missing or empty folder is created and
marked; a non-empty one is refused unless `overwrite` is given AND its marker says poodle made it as a `kind`
output. A folder of anything else (a thesis, a home directory, another tool's results) is never deleted: the
refusal names what is in it. This is the guard for `poodle demo --overwrite` (and `make demo DEMO_OUT=...`).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

MARKER = ".poodle-output.json"


class OutputDirError(ValueError):
    """The output folder cannot be used; the message names it and what to do."""


def read_marker(path: str | Path) -> dict | None:
    """The marker poodle wrote in `path`, or None (no marker, or not one poodle could have written)."""
    try:
        data = json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "kind" in data else None


def claim_output_dir(path: str | Path, kind: str, overwrite: bool = False) -> Path:
    """Make `path` an empty, marked `kind` output folder, or raise `OutputDirError` without touching anything."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"{out} exists and is not a folder; choose another output folder")
    try:
        contents = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    except OSError as e:
        raise OutputDirError(f"cannot read {out}: {e.strerror or e}") from e
    if contents:
        if not overwrite:
            raise OutputDirError(f"{out} exists and is not empty; pass --overwrite to replace a previous poodle {kind} "
                                 "there, or choose another folder")  # fmt: skip
        marker = read_marker(out)
        if marker is None or marker.get("kind") != kind:
            shown = ", ".join(c for c in contents[:4] if c != MARKER) + (", ..." if len(contents) > 4 else "")
            made = f"a poodle {marker['kind']} output" if marker else f"not made by poodle (no {MARKER})"
            raise OutputDirError(f"refusing to delete {out}: it is {made} and holds {shown}; move it or choose "
                                 "another folder")  # fmt: skip
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text(json.dumps({"kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
    except OSError as e:
        raise OutputDirError(f"cannot write to {out}: {e.strerror or e}") from e
    return out
