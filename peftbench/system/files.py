"""Files written so that a reader never sees half of one: atomic writes, JSON, content hashes, names safe to
use as file names, and what an interrupted writer leaves behind."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

# the temp file ``atomic_write`` renames into place: ``.<name>.<8 random characters of mkstemp>.tmp``
TMP_FILE = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp")
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]*")


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


def leftover_tmp(folder: Path) -> list[Path]:
    """The temp files an interrupted ``atomic_write`` left in ``folder`` (only names of its own pattern)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and TMP_FILE.fullmatch(p.name))


def move_aside(path: Path, folder: Path) -> Path:
    """Move ``path`` into ``folder`` (made if need be) under its own name, or ``name.1``, ``name.2``, ...
    when that is taken: nothing already set aside is overwritten. Returns where it went."""
    folder.mkdir(parents=True, exist_ok=True)
    target, n = folder / path.name, 0
    while target.exists():
        n += 1
        target = folder / f"{path.name}.{n}"
    os.replace(path, target)
    return target


def unsafe_name(name: str) -> str | None:
    """Why ``name`` cannot be part of a file name that must stay in its folder (None: it can): letters,
    digits, '_', '.', '-' and '@', not starting with '.' or '-', without '..' or '--' (which separates a
    run file's method, task and seed)."""
    if not SAFE_NAME.fullmatch(name):
        return "use only letters, digits, '_', '.', '-' or '@', and start with a letter, digit or '_'"
    if ".." in name:
        return "it must not contain '..'"
    if "--" in name:
        return "it must not contain '--' (it separates the method, task and seed of a run file's name)"
    return None
