"""Parsers for a task's raw data files: each yields ``(line number, row dict)``, so every error names the
file and line. Formats: tab- or other delimiter-separated text, JSON lines, a JSON list."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from peftbench.tasks.data_spec import DataError, FileSpec


def read_delimited(path: Path, spec: FileSpec) -> Iterator[tuple[int, dict[str, Any]]]:
    """A delimiter-separated file, with or without a header. Only the first column may contain the
    delimiter (as in ``text;label`` files): rows are split from the right. No quoting: the GLUE-style
    files are not RFC-4180 quoted (a review may start with a quote it never closes), so ``csv`` misreads them."""
    with open(path, encoding="utf-8-sig", newline="") as fh:  # -sig: a byte-order mark is not a column name
        lines = enumerate(fh, start=1)
        names = spec.columns
        if spec.header:
            try:
                _, first = next(lines)
            except StopIteration:
                return
            found = first.rstrip("\r\n").split(spec.delimiter)
            names = names or [h.strip() for h in found]
            if len(found) != len(names):
                raise DataError(f"{path}:1: the header has {len(found)} columns, the task names {len(names)} "
                                f"({', '.join(names)}).")
        assert names is not None
        for lineno, line in lines:
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.rsplit(spec.delimiter, len(names) - 1)
            if len(parts) != len(names):
                raise DataError(f"{path}:{lineno}: expected {len(names)} {_delim_name(spec.delimiter)}-separated "
                                f"columns ({', '.join(names)}), found {len(parts)}: {line[:80]!r}")
            yield lineno, dict(zip(names, parts, strict=True))


def _delim_name(d: str) -> str:
    return {"\t": "tab", ",": "comma", ";": "semicolon"}.get(d, repr(d))


def read_jsonl(path: Path, spec: FileSpec) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg}).") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: each line must be a JSON object, found {type(row).__name__}.")
            yield lineno, _rename(row, spec.columns)


def read_json(path: Path, spec: FileSpec) -> Iterator[tuple[int, dict[str, Any]]]:
    """A JSON list of objects; the 'line' reported for a bad row is its index in the list (1-based)."""
    try:
        rows = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg}).") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: format 'json' expects a JSON list of objects, found {type(rows).__name__}.")
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{path}: item {i} of the list is not an object.")
        yield i, _rename(row, spec.columns)


def _rename(row: dict[str, Any], columns: list[str] | None) -> dict[str, Any]:
    """For JSON rows ``columns`` may rename fields: ``["question=goal"]`` reads ``goal`` as ``question``."""
    if not columns:
        return row
    out = dict(row)
    for c in columns:
        if "=" in c:
            new, old = c.split("=", 1)
            if old in row:
                out[new] = row[old]
    return out


READERS = {"tsv": read_delimited, "delimited": read_delimited, "json": read_json, "jsonl": read_jsonl}


def count_file_rows(path: Path, spec: FileSpec) -> int | None:
    """Rows in one file without parsing it (non-blank lines less the header, or the list's length); None
    when a JSON list cannot be read."""
    if spec.format == "json":
        try:
            return len(json.loads(path.read_text(encoding="utf-8-sig")))
        except (json.JSONDecodeError, TypeError):
            return None
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        lines = sum(1 for line in fh if line.strip())
    return max(0, lines - (1 if spec.format in ("tsv", "delimited") and spec.header else 0))
