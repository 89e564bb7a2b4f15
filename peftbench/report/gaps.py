"""What a run session's folder lacks: the planned cells with no finished result (no run file, cancelled,
failed), files written after ``session.json`` last recorded them, and a session that did not end. ``peftbench
report`` and ``peftbench claims`` print these under their tables and exit 1 (docs/usage.md)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

FINISHED = ("ok", "skipped")
WHY_UNFINISHED = {"running": "the process was stopped before it ended, or is still running",
                  "interrupted": "it was interrupted (Ctrl-C, or --time-budget left cells for later)"}


@dataclasses.dataclass
class Gaps:
    """One session folder's gaps; false when there are none."""

    folder: Path
    status: str
    planned: int
    no_result: list[str]
    cancelled: list[tuple[str, str]]      # (key, reason)
    failed: list[tuple[str, str, str]]    # (key, status, message)
    unrecorded: list[str]                 # shown, but session.json holds no sha256 for them

    def __bool__(self) -> bool:
        return bool(self.status != "finished" or self.no_result or self.cancelled or self.failed
                    or self.unrecorded)

    def lines(self) -> list[str]:
        """The gap listing: a headline, one line per kind of gap, and what to do."""
        missing = len(self.no_result) + len(self.cancelled) + len(self.failed)
        head = f"{self.folder}: " + (f"{missing} of {self.planned} planned cells have no finished result"
                                     if missing else f"all {self.planned} planned cells have a result")
        if missing and missing == self.planned:
            head += " (no cell of this session has finished)"
        if self.status != "finished":
            why = WHY_UNFINISHED.get(self.status, "")
            head += f"; the session did not finish (session.json says {self.status!r}" + (f": {why})" if why else ")")
        lines = [head + "."]
        if self.no_result:
            lines.append("no result: " + ", ".join(self.no_result))
        if self.cancelled:
            lines.append("cancelled: " + ", ".join(f"{k} ({why})" if why else k for k, why in self.cancelled))
        if self.failed:
            lines.append("failed: " + ", ".join(f"{k} ({s}: {msg})" if msg else f"{k} ({s})"
                                                for k, s, msg in self.failed))
        if self.unrecorded:
            lines.append("not yet recorded in session.json (written after the session last recorded its files, "
                         "so no sha256 proves them; shown above): " + ", ".join(self.unrecorded))
        if missing or self.status != "finished" or self.unrecorded:
            lines.append(f"`peftbench run --resume --output {self.folder}` with the session's other flags "
                         "re-runs the cells without a finished result and records every file.")
        return lines

    def as_json(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "status": self.status, "planned": self.planned,
                "no_result": self.no_result,
                "cancelled": [{"key": k, "reason": why} for k, why in self.cancelled],
                "failed": [{"key": k, "status": s, "message": msg} for k, s, msg in self.failed],
                "unrecorded": self.unrecorded}


def folder_gaps(folder: Path, session: dict[str, Any], runs: dict[str, dict[str, Any]],
                unrecorded: list[str]) -> Gaps:
    """The gaps of a run session: each planned cell (``planned_cells``) without an ok or skipped run file."""
    from peftbench.results.store import planned_cells

    gaps = Gaps(folder, str(session.get("status") or "?"), 0, [], [], [], list(unrecorded))
    planned = planned_cells(session)
    gaps.planned = len(planned)
    for key in planned:
        run = runs.get(key)
        if run is None:
            gaps.no_result.append(key)
        elif run.get("status") == "cancelled":
            gaps.cancelled.append((key, str(run.get("reason") or "")[:120]))
        elif run.get("status") not in FINISHED:
            message = str((run.get("error") or {}).get("message") or run.get("reason") or "")
            gaps.failed.append((key, str(run.get("status")), message.splitlines()[0][:120] if message else ""))
    return gaps


def gap_text(gaps: list[Gaps], markdown: bool = False) -> str:
    """Every folder's gap listing as text (Markdown: a list under a paragraph)."""
    out = []
    for g in gaps:
        head, *rest = g.lines()
        out.append("\n".join([head, *((f"- {line}" if markdown else f"  {line}") for line in rest)]))
    return "\n\n".join(out)
