"""What a task's score means against guessing: **chance** (a uniform pick among each example's choices) and
the **majority class** (always the most frequent gold answer), over the test examples lm-eval scores.

A method whose score does not clear these has learnt nothing the test can show: BoolQ asked without its
passages has 62 % 'yes', so every method there scores about 0.62 whatever it learnt. The report marks such a
task *uninformative* (``peftbench.report.baselines``).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any


def label_baselines(records: list[dict[str, Any]], limit: int | None = None) -> dict[str, Any]:
    """Chance and majority-class accuracy of the normalized test ``records`` (``tasks.rows.normalize``: each
    has ``choices`` and the gold ``label`` index). ``limit``: lm-eval scores only the first ``limit`` documents
    (0 or ``None``: all). A task whose rows share one label set names the label's word (``yes``); one whose
    rows carry their own options (ARC), the gold position (``option 3``, counting from 1): always answering
    the most frequent position is that task's majority class."""
    scored = records[:limit] if limit else records
    if not scored:
        raise ValueError("no test records to compute baselines from")
    label_set = all(r["choices"] == scored[0]["choices"] for r in scored)
    counts = Counter(int(r["label"]) for r in scored)
    index, hits = max(counts.items(), key=lambda kv: (kv[1], -kv[0]))  # ties: the first position
    return {"chance": sum(1.0 / len(r["choices"]) for r in scored) / len(scored),
            "majority": hits / len(scored),
            "majority_label": scored[0]["choices"][index] if label_set else f"option {index + 1}",
            "majority_index": index, "n": len(scored), "limit": limit or None}


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a prepared split file (JSON lines)."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def prepared_baselines(folder: Path, limit: int | None = None) -> dict[str, Any]:
    """``label_baselines`` of a prepared data folder's test split (``PreparedData.folder``)."""
    return label_baselines(read_records(Path(folder) / "test.jsonl"), limit)
