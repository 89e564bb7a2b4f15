"""Re-render the result tables the docs and the result folders' READMEs show from the committed result
files, in place: each `**<title>**` block followed by a Markdown table is replaced by the current rendering
of the source whose table has that title. tests/test_results_docs.py fails when a page and the files
disagree; run this after changing either (and read the diff).

    python benchmarks/render_docs.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from peftbench.report.folders import folder_tables  # noqa: E402
from peftbench.report.markdown import render_markdown  # noqa: E402

THROUGHPUT = "results/throughput-gpu/"
LATENCY = "results/latency-gpu/"
RENDERED = [  # (page, source): tests/test_results_docs.py checks each of these. A source is a result folder
    # (`peftbench report DIR --markdown`) or a benchmarks/train_throughput.py results file (.json: its
    # --markdown); "SOURCE#TEXT" keeps only the tables whose title contains TEXT (the rest shown elsewhere).
    # Within a page the entries are in the order of its tables.
    ("docs/tasks.md", "results/tasks-gpu/sst2"),
    ("docs/tasks.md", "results/tasks-gpu/boolq"),
    ("docs/tasks.md", "results/tasks-gpu/arc_easy"),
    ("docs/latency.md", LATENCY + "latency-grid-A#static regime"),
    ("docs/latency.md", LATENCY + "latency-stack-fix-A"),
    ("docs/latency.md", LATENCY + "latency-qlora-stack-fix"),
    ("docs/performance.md", THROUGHPUT + "ablate-loss-sync-fix.json"),
    ("docs/performance.md", THROUGHPUT + "smol-qa-loss-sync-fix.json"),
    ("docs/performance.md", THROUGHPUT + "sst2-side-by-side.json"),
    ("docs/performance.md", THROUGHPUT + "1b.json"),
    ("docs/results.md", THROUGHPUT + "8b-all.json"),  # the same file as results/reference/8b-shape/throughput.json
    ("docs/results.md", THROUGHPUT + "8b-all-ckpt.json"),
    ("docs/results.md", "results/reference/8b-shape"),
    ("results/quickstart-cpu/README.md", "results/quickstart-cpu"),
    ("results/latency-gpu/README.md", LATENCY + "latency-grid-A#eager regime"),
    ("results/latency-gpu/README.md", LATENCY + "latency-eager-lora-wrapped-merge"),
    ("results/latency-gpu/README.md", LATENCY + "latency-one-shape-median"),
    ("results/latency-gpu/README.md", LATENCY + "latency-one-shape-warm-cache"),
    ("results/latency-gpu/README.md", LATENCY + "latency-grid-A-side-by-side"),
    ("results/latency-gpu/README.md", LATENCY + "latency-one-shape-side-by-side"),
    ("results/latency-gpu/README.md", LATENCY + "latency-grid-eager-B"),
    ("results/latency-gpu/README.md", LATENCY + "latency-one-shape-slow-host"),
    *(("results/throughput-gpu/README.md", THROUGHPUT + name) for name in (
        "smol.json", "ablate-first.json", "ablate.json", "smol-qa.json",
        "varlen-loss-kernel-recompiling.partial.json", "sst2-loss-kernel-recompiling.json", "8b.json",
        "8b-ckpt.json", "ablate-side-by-side.json", "smol-qa-side-by-side.json", "varlen-side-by-side.json",
        "gc-freeze.json")),
]


def split(source: str) -> tuple[str, str | None]:
    """(the result folder or file, the text its kept tables' titles contain, or None for every table)."""
    path, _, part = source.partition("#")
    return path, part or None


def render(source: str) -> str:
    """The Markdown a page shows for one entry of RENDERED."""
    path, part = split(source)
    if path.endswith(".json"):
        import json

        sys.path.insert(0, str(ROOT / "benchmarks"))
        from train_throughput import markdown

        text = markdown(json.loads((ROOT / path).read_text()))
    else:
        text = render_markdown(folder_tables(ROOT / path)[0])
    return text if part is None else select(text, part)


def select(markdown: str, part: str) -> str:
    """The `**title**` + table blocks of ``markdown`` whose title contains ``part``."""
    return "\n\n".join(markdown[a:b] for title, a, b in blocks(markdown) if part in title) + "\n"


def blocks(markdown: str, start: int = 0) -> list[tuple[str, int, int]]:
    """(title, start, end) of each `**title**` + Markdown table block in ``markdown`` from ``start``."""
    pattern = re.compile(r"^\*\*(.+?)\*\*\n\n(?:\|.*\n?)+", flags=re.M)
    return [(m.group(1), m.start(), m.start() + len(m.group(0).rstrip("\n")))
            for m in pattern.finditer(markdown, start)]


def main(argv: list[str] | None = None) -> None:
    import argparse

    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)  # --help, not a rewrite
    changed = []
    cursor: dict[str, int] = {}  # per doc: tables are matched in order, so equal titles stay apart
    texts: dict[str, str] = {}
    for doc, source in RENDERED:
        text = texts.setdefault(doc, (ROOT / doc).read_text())
        fresh = render(source) + "\n"
        for title, a, b in blocks(fresh):
            block = fresh[a:b]
            match = next(((s, e) for t, s, e in blocks(text, cursor.get(doc, 0)) if t == title), None)
            if match is None:
                print(f"{doc}: no table titled {title!r} after the previous one (add it by hand once)")
                continue
            s, e = match
            if text[s:e] != block:
                text = text[:s] + block + text[e:]
                changed.append(f"{doc}: {title[:80]}")
            cursor[doc] = s + len(block)
        texts[doc] = text
    for doc, text in texts.items():
        (ROOT / doc).write_text(text)
    print("\n".join(changed) or "all tables current")


if __name__ == "__main__":
    main()
