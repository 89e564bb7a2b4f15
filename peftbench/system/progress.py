"""Progress reporting for a session: a no-op for library use, rich bars with ETA on stderr for the CLI."""

from __future__ import annotations

from typing import Any


class NullProgress:
    def message(self, text: str) -> None: ...
    def start(self, total: int) -> None: ...
    def cell_start(self, spec: Any) -> None: ...
    def phase(self, name: str) -> None: ...
    def training(self, steps: int) -> None: ...
    def step(self, step: int, metrics: dict[str, Any]) -> None: ...
    def cell_done(self, spec: Any, result: dict[str, Any], resumed: bool = False) -> None: ...
    def stop(self) -> None: ...


class RichProgress(NullProgress):
    """Two bars: cells done (with ETA) and the current cell's phase / training steps (with ETA)."""

    def __init__(self, console: Any) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = console
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                            transient=False)
        self.cells = self.current = None
        self.label = ""

    def message(self, text: str) -> None:
        self.console.print(f"[dim]{text}[/dim]")

    def start(self, total: int) -> None:
        self.bar.start()
        self.cells = self.bar.add_task("cells", total=total)
        self.current = self.bar.add_task("", total=None)

    def cell_start(self, spec: Any) -> None:
        self.label = spec.key
        self.bar.update(self.current, description=f"{self.label}: starting", total=None, completed=0)

    def phase(self, name: str) -> None:
        if name != "train":
            self.bar.update(self.current, description=f"{self.label}: {name}", total=None, completed=0)

    def training(self, steps: int) -> None:
        self.bar.reset(self.current, description=f"{self.label}: train", total=steps or None)

    def step(self, step: int, metrics: dict[str, Any]) -> None:
        self.bar.update(self.current, completed=step,
                        description=f"{self.label}: train loss {metrics['loss']:.3f}")

    def cell_done(self, spec: Any, result: dict[str, Any], resumed: bool = False) -> None:
        status = result["status"]
        colour = {"ok": "green", "skipped": "yellow"}.get(status, "red")
        note = " (kept from the earlier run)" if resumed else ""
        why = result.get("reason") or (result.get("error") or {}).get("message", "")
        self.console.print(f"[{colour}]{status:>9}[/{colour}] {spec.key}{note}" + (f" — {why[:200]}" if why and status != "ok" else ""))
        self.bar.advance(self.cells)

    def stop(self) -> None:
        if self.current is not None:
            self.bar.update(self.current, visible=False)
        self.bar.stop()
