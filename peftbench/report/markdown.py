"""Rich tables as GitHub Markdown (``peftbench report --format markdown``, the results documents)."""

from __future__ import annotations

from typing import Any


def render_markdown(tables: list[Any]) -> str:
    """Each table as its title in bold, then a pipe table of its cells as the console prints them."""
    from rich.console import Console

    out = []
    for table in tables:
        headers = [c.header for c in table.columns]
        cells = [list(c.cells) for c in table.columns]
        out.append(f"**{table.title}**\n")
        out.append("| " + " | ".join(headers) + " |")
        out.append("|" + "|".join("---" for _ in headers) + "|")
        console = Console(width=400)
        for i in range(len(cells[0])):
            row = []
            for col in cells:
                with console.capture() as cap:
                    console.print(col[i], end="")
                row.append(cap.get())
            out.append("| " + " | ".join(row) + " |")
        out.append("")
    return "\n".join(out)
