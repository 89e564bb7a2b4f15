"""What every phase of a cell shares: the session's services (``CellEnv``) and the ``phase`` block that
times a phase into the record and notes what other processes used meanwhile."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftbench.results.record import RunRecord
from peftbench.system import memory


@dataclass(frozen=True)
class CellEnv:
    """The services a cell uses, set up once per session: the plugin hooks, progress display, the base
    model's tokenizer, the folder of materialized lm-eval task files and where artifacts are kept."""

    hook: Any
    progress: Any
    tokenizer: Any
    include_path: Path
    artifacts: Path | None = None   # --keep-artifacts: <output>/artifacts, else a temporary folder per cell


@contextlib.contextmanager
def phase(record: RunRecord, name: str, progress: Any):
    """Time the block as ``record.timings[name]``; keep the most other processes used while it ran."""
    progress.phase(name)
    seen: dict[str, Any] = {}
    t0 = time.perf_counter()
    try:
        with memory.watch_neighbours(seen):
            yield
    finally:
        record.timings[name] = round(time.perf_counter() - t0, 3)
        note_neighbours(record, seen)


def note_neighbours(record: RunRecord, seen: dict[str, Any]) -> None:
    for key in memory.NEIGHBOUR_KEYS:
        value = seen.get(key)
        if value is not None:
            setattr(record, key, max(value, getattr(record, key) or 0))
