"""Atomic file writes: a reader sees the old file or the new one, never a half-written one.

Every file the product writes for later runs to trust - checkpoints, cached baseline results,
results Parquet files, label masks - goes through ``atomic_write``: the content is written to a
temporary file in the same folder (same file system, so the rename is atomic) whose name keeps
the extension (``np.savez`` and friends append one otherwise), then renamed over the target. A
failure removes the temporary file and leaves the target as it was.
"""
from __future__ import annotations

import os
import uuid
from typing import Callable


def atomic_write(path: str, write: Callable[[str], None]) -> str:
    """Write ``path`` by calling ``write(temporary_path)``, then renaming; returns ``path``."""
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    stem, ext = os.path.splitext(name)
    tmp = os.path.join(folder, f".{stem}.tmp-{uuid.uuid4().hex[:8]}{ext}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_json(path: str, obj: object) -> str:
    """``obj`` as indented JSON at ``path``, atomically (numbers numpy or torch may give become floats)."""
    import json

    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=1, default=float)

    return atomic_write(path, write)
