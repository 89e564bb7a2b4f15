"""Re-render the result tables the docs show from the committed result folders, in place: each
`**<title>**` block followed by a Markdown table is replaced by the current rendering of the folder whose
table has that title. tests/test_results_docs.py fails when the docs and the files disagree; run this after
changing either (and read the diff).

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

RENDERED = [  # (doc, result folder): tests/test_results_docs.py checks each of these
    ("README.md", "results/quickstart-cpu"),
    ("docs/tasks.md", "results/tasks-gpu/sst2"),
    ("docs/tasks.md", "results/tasks-gpu/boolq"),
    ("docs/tasks.md", "results/tasks-gpu/arc_easy"),
    ("docs/latency.md", "results/latency-gpu/latency-grid-A"),
    ("docs/latency.md", "results/latency-gpu/latency-stack-fix-A"),
    ("docs/latency.md", "results/latency-gpu/latency-qlora-stack-fix"),
    ("docs/latency.md", "results/latency-gpu/latency-eager-lora-wrapped-merge"),
    ("docs/latency.md", "results/latency-gpu/latency-one-shape-median"),
    ("docs/latency.md", "results/latency-gpu/latency-one-shape-warm-cache"),
    ("docs/latency.md", "results/latency-gpu/latency-grid-A-side-by-side"),
    ("docs/latency.md", "results/latency-gpu/latency-one-shape-side-by-side"),
    ("docs/latency.md", "results/latency-gpu/latency-grid-eager-B"),
    ("docs/latency.md", "results/latency-gpu/latency-one-shape-slow-host"),
    ("docs/latency.md", "results/reference/8b-shape"),
    # benchmarks/train_throughput.py results files (a .json path: rendered by its --markdown)
    ("docs/performance.md", "results/throughput-gpu/ablate.json"),
    ("docs/performance.md", "results/throughput-gpu/ablate-first.json"),
    ("docs/performance.md", "results/throughput-gpu/varlen-loss-kernel-recompiling.partial.json"),
    ("docs/performance.md", "results/throughput-gpu/smol-qa.json"),
    ("docs/performance.md", "results/throughput-gpu/smol.json"),
    ("docs/performance.md", "results/throughput-gpu/sst2-loss-kernel-recompiling.json"),
    ("docs/performance.md", "results/throughput-gpu/ablate-side-by-side.json"),
    ("docs/performance.md", "results/throughput-gpu/smol-qa-side-by-side.json"),
    ("docs/performance.md", "results/throughput-gpu/varlen-side-by-side.json"),
    ("docs/performance.md", "results/throughput-gpu/sst2-side-by-side.json"),
    ("docs/performance.md", "results/throughput-gpu/ablate-loss-sync-fix.json"),
    ("docs/performance.md", "results/throughput-gpu/smol-qa-loss-sync-fix.json"),
    ("docs/performance.md", "results/throughput-gpu/1b.json"),
    ("docs/performance.md", "results/throughput-gpu/8b-all.json"),
    ("docs/performance.md", "results/throughput-gpu/8b-all-ckpt.json"),
    ("docs/performance.md", "results/throughput-gpu/8b.json"),
    ("docs/performance.md", "results/throughput-gpu/8b-ckpt.json"),
]


def render(source: str) -> str:
    """The Markdown the docs show for one entry of RENDERED."""
    if source.endswith(".json"):
        import json

        sys.path.insert(0, str(ROOT / "benchmarks"))
        from train_throughput import markdown

        return markdown(json.loads((ROOT / source).read_text()))
    return render_markdown(folder_tables(ROOT / source)[0])


def blocks(markdown: str, start: int = 0) -> list[tuple[str, int, int]]:
    """(title, start, end) of each `**title**` + Markdown table block in ``markdown`` from ``start``."""
    pattern = re.compile(r"^\*\*(.+?)\*\*\n\n(?:\|.*\n?)+", flags=re.M)
    return [(m.group(1), m.start(), m.start() + len(m.group(0).rstrip("\n")))
            for m in pattern.finditer(markdown, start)]


def main() -> None:
    changed = []
    cursor: dict[str, int] = {}  # per doc: tables are matched in order, so equal titles stay apart
    texts: dict[str, str] = {}
    for doc, folder in RENDERED:
        text = texts.setdefault(doc, (ROOT / doc).read_text())
        fresh = render(folder) + "\n"
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
