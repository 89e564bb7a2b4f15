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


def show_folder(output: Path, as_json: bool, markdown: bool = False) -> None:
    """One results folder as ``peftbench run`` leaves it: its tables (or raw files as JSON), then a line per
    failed cell."""
    from peftbench.report.folders import folder_data, folder_tables

    if as_json:
        print_json(folder_data(Path(output)))
        return
    tables, failed = folder_tables(Path(output))
    print_tables(tables, markdown)
    for m, r in failed.items():
        click.echo(f"{m}: {r.get('status')}: {(r.get('error') or {}).get('message', '')[:300]}")
