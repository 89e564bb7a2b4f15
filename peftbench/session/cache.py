"""What the cells of one session share, passed to each cell explicitly: the base model's retention scores
(scored once, by the base row), latencies already timed (``latency_once``) and tokenized training data."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftbench.session.scores import as_retention_score
from peftbench.session.timing import latency_key_of_result


@dataclass
class CellCache:
    base_retention: dict[str, Any] = field(default_factory=dict)   # task -> the base model's RetentionScore
    latency: dict[str, dict[str, Any]] = field(default_factory=dict)  # latency key -> {"latency", "cell"}
    train_data: dict[tuple[str, int], Any] = field(default_factory=dict)  # (task, max_length) -> TrainData
    shared_folder: Path | None = None  # with --shard: the folder other processes write run files into

    @classmethod
    def from_runs(cls, runs: Iterable[dict[str, Any]], shared_folder: Path | None = None) -> CellCache:
        """A cache primed with what kept run files (a resumed session's) already measured."""
        cache = cls(shared_folder=shared_folder)
        runs = list(runs)
        for r in runs:
            if r.get("method") == "base" and r.get("status") == "ok":
                for name, entry in (r.get("retention") or {}).items():
                    cache.base_retention.setdefault(name, as_retention_score(entry))
        cache.remember_latency(runs)
        return cache

    def remember_latency(self, runs: Iterable[dict[str, Any]]) -> None:
        """Keep the timings these run files measured themselves (not those they reused from another cell)."""
        for r in runs:
            latency = r.get("latency") or {}
            key = latency_key_of_result(r) if r.get("status") == "ok" else None
            if key and latency.get("regimes") and not latency.get("errors") and "measured_in" not in latency:
                self.latency.setdefault(key, {"latency": latency, "cell": r.get("key")})

    def timed_latency(self, key: str) -> dict[str, Any] | None:
        """The timing an earlier cell measured for ``key``. With --shard, another process may have timed it
        since this one started, so the shared folder is read again first: a session times each method once,
        not once per shard. Damaged files are skipped there (they would stop a shard mid-session)."""
        if key not in self.latency and self.shared_folder is not None:
            runs = []
            for path in (self.shared_folder / "runs").glob("*.json"):
                try:
                    runs.append(json.loads(path.read_text()))
                except (OSError, ValueError):
                    continue
            self.remember_latency(runs)
        return self.latency.get(key)
