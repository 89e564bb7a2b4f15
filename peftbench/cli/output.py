"""Where the commands print: tables and JSON to stdout, progress and messages to stderr."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click


def stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def stdout_console():
    """A terminal gets tables as wide as it is; files and pipes get the whole table."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=220)


def print_tables(tables: list[Any], markdown: bool = False) -> None:
    from peftbench.report.markdown import render_markdown

    if markdown:
        click.echo(render_markdown(tables))
        return
    console = stdout_console()
    for table in tables:
        console.print(table)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def show_folder(output: Path, as_json: bool, markdown: bool = False, gaps: bool = False) -> list[Any]:
    """One results folder as ``peftbench run`` leaves it: its tables (or raw files as JSON), then a line per
    failed cell (latency sessions). With ``gaps``, a run session's gaps follow the tables (``print_gaps``; the
    JSON gets a ``gaps`` key); they are returned either way (empty: none)."""
    from peftbench.report.folders import folder_data, folder_report

    if as_json:
        data = folder_data(Path(output))
        found = [data.pop("gaps")] if data.get("gaps") else []
        print_json({**data, "gaps": [g.as_json() for g in found]} if found and gaps else data)
        return found
    tables, failed, found = folder_report(Path(output))
    print_tables(tables, markdown)
    for m, r in failed.items():
        click.echo(f"{m}: {r.get('status')}: {(r.get('error') or {}).get('message', '')[:300]}")
    found = [found] if found else []
    if gaps:
        print_gaps(found, markdown)
    return found


def print_gaps(gaps: list[Any], markdown: bool = False, err: bool = False) -> None:
    """Each folder's gaps (``peftbench.report.gaps``) on stdout under the tables, or on stderr (``err``: the
    csv, json and LaTeX exports, whose stdout is data)."""
    from peftbench.report.gaps import gap_text

    if gaps:
        click.echo(("\n" if not err else "") + gap_text(gaps, markdown=markdown and not err), err=err)
