"""Parsers for a task's raw data files: each yields ``(line number, row dict)``, so every error names the
file and line. Formats: tab- or other delimiter-separated text, lines that start with their label (TREC's
``LABEL:fine text``, ``label<TAB>text``), JSON lines, a JSON list."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from peftbench.tasks.data_spec import DataError, FileSpec


def read_text(path: Path, spec: FileSpec) -> str:
    """The file's text in the spec's encoding; bytes that are not that encoding are an error naming the line."""
    data = path.read_bytes()
    try:
        return data.decode(spec.encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: not valid {spec.encoding} text (byte {data[e.start]:#04x}). Set "
                        "'encoding:' for the file in data.local (e.g. encoding: latin-1), or re-encode it as "
                        "UTF-8.") from None


def _lines(path: Path, spec: FileSpec) -> Iterator[tuple[int, str]]:
    """(line number, line without its line ending), as ``open(newline="")`` splits them."""
    for lineno, line in enumerate(io.StringIO(read_text(path, spec), newline=""), start=1):
        yield lineno, line.rstrip("\r\n")


def read_delimited(path: Path, spec: FileSpec) -> Iterator[tuple[int, dict[str, Any]]]:
    """A delimiter-separated file, with or without a header. Only the first column may contain the
    delimiter (as in ``text;label`` files): rows are split from the right. No quoting: the GLUE-style
    files are not RFC-4180 quoted (a review may start with a quote it never closes), so ``csv`` misreads them."""
    delimiter = str(spec.delimiter)
    lines = _lines(path, spec)
    names = spec.columns
    if spec.header:
        try:
            _, first = next(lines)
        except StopIteration:
            return
        found = first.split(delimiter)
        names = names or [h.strip() for h in found]
        if len(found) != len(names):
            raise DataError(f"{path}:1: the header has {len(found)} columns, the task names {len(names)} "
                            f"({', '.join(names)}).")
    assert names is not None
    for lineno, line in lines:
        if not line.strip():
            continue
        parts = line.rsplit(delimiter, len(names) - 1)
        if len(parts) != len(names):
            raise DataError(f"{path}:{lineno}: expected {len(names)} {_delim_name(delimiter)}-separated "
                            f"columns ({', '.join(names)}), found {len(parts)}: {line[:80]!r}")
        yield lineno, dict(zip(names, parts, strict=True))


def read_label_first(path: Path, spec: FileSpec) -> Iterator[tuple[int, dict[str, Any]]]:
    """Lines that start with their label, split from the left so only the last column (the text) may hold
    the delimiter: ``DESC:manner How did serfdom develop ?`` with delimiters ``[":", " "]`` and columns
    ``[label, fine, text]``; ``label<TAB>text`` with delimiter tab. No delimiter: any run of whitespace."""
    names = spec.columns or ["label", "text"]
    delims = spec.delimiter if isinstance(spec.delimiter, list) else [spec.delimiter] * (len(names) - 1)
    lines = _lines(path, spec)
    if spec.header:
        next(lines, None)
    for lineno, line in lines:
        if not line.strip():
            continue
        parts, rest = [], line
        for d in delims:
            head, sep, rest = _split_once(rest, d)
            if not sep:
                shown = "whitespace" if d is None else _delim_name(d)
                raise DataError(f"{path}:{lineno}: expected {len(names)} columns ({', '.join(names)}), each but the "
                                f"last ended by {shown}; found {len(parts) + 1}: {line[:80]!r}")
            parts.append(head)
        yield lineno, dict(zip(names, [*parts, rest], strict=True))


def _split_once(text: str, delimiter: str | None) -> tuple[str, str, str]:
    if delimiter is not None:
        return text.partition(delimiter)
    parts = text.split(None, 1)
    return (parts[0], " ", parts[1]) if len(parts) == 2 else (text, "", "")


def _delim_name(d: str) -> str:
    return {"\t": "tab", ",": "comma", ";": "semicolon", " ": "space", ":": "colon"}.get(d, repr(d))


def read_jsonl(path: Path, spec: FileSpec) -> Iterator[tuple[int, dict[str, Any]]]:
    for lineno, line in _lines(path, spec):
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
    text = read_text(path, spec)
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and _is_json_lines(text):
            raise DataError(f"{path}: holds JSON Lines (one JSON object per line), not a JSON list: set "
                            "'format: jsonl' for it in data.local (or for its split), or name it .jsonl.") from None
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg}).") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: format 'json' expects a JSON list of objects, found {type(rows).__name__}.")
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{path}: item {i} of the list is not an object.")
        yield i, _rename(row, spec.columns)


def _is_json_lines(text: str) -> bool:
    """Whether the first two non-blank lines each hold one JSON object."""
    lines = [line for line in text.splitlines() if line.strip()][:2]
    try:
        return len(lines) == 2 and all(isinstance(json.loads(line), dict) for line in lines)
    except json.JSONDecodeError:
        return False


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


READERS = {"tsv": read_delimited, "delimited": read_delimited, "json": read_json, "jsonl": read_jsonl,
           "label_first": read_label_first}


def count_file_rows(path: Path, spec: FileSpec) -> int | None:
    """Rows in one file without parsing it (non-blank lines less the header, or the list's length); None
    when a JSON list cannot be read."""
    if spec.format == "json":
        try:
            return len(json.loads(path.read_text(encoding=spec.encoding, errors="replace")))
        except (json.JSONDecodeError, TypeError):
            return None
    with open(path, encoding=spec.encoding, errors="replace") as fh:
        lines = sum(1 for line in fh if line.strip())
    return max(0, lines - (1 if spec.format not in ("json", "jsonl") and spec.header else 0))
