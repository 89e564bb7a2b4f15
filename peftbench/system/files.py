"""Files written so that a reader never sees half of one: atomic writes, JSON, content hashes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: Path, write: Callable[[IO[str]], Any]) -> None:
    """Write ``path`` through ``write(file)`` atomically: a temp file of this writer's own in the same
    folder (several processes may write the same path at once), fsync, rename. Readers see the old file or
    the new one, never part of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` to ``path`` as JSON, atomically."""
    def dump(f: IO[str]) -> None:
        json.dump(data, f, indent=2, sort_keys=False, default=str, allow_nan=True)
        f.write("\n")

    atomic_write(path, dump)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
