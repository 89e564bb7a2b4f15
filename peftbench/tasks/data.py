"""Task data: read a task's raw files (or a hub dataset), check every row, write normalized JSONL.

Where the data comes from, in this order:

1. a local data folder (``--data-dir`` or ``PEFTBENCH_DATA_DIR``) laid out like ``../shared/data``:
   ``<data-dir>/<data.local.folder>/<file>``;
2. the hub dataset named in the task (``data.hub``), through ``datasets.load_dataset``;
3. otherwise a clear error naming both.

Every source is parsed into the same records — the task's ``fields`` plus ``choices`` (the label words, or
the row's own answer options) and ``label`` (the index of the gold choice) — and written as
``<cache>/data/<task>/<fingerprint>/<split>.jsonl``, which the task's lm-eval YAML reads through
``${data_dir}``. All checks (missing file, malformed row, label outside the label set, empty split) run
before any training starts; the files are written atomically, so nothing is ever half-written.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftbench.errors import UsageError
from peftbench.system.files import atomic_write, write_json

FORMATS = ("tsv", "delimited", "json", "jsonl")
DATA_DIR_ENV = "PEFTBENCH_DATA_DIR"


class DataError(UsageError):
    """A task's data is missing or malformed (names the file and line)."""


# ---- the task's data spec --------------------------------------------------------------------------
@dataclass
class FileSpec:
    """One raw file of a split, and how to read it."""

    file: str
    format: str
    header: bool = True
    columns: list[str] | None = None
    delimiter: str = "\t"


@dataclass
class DataSpec:
    """``data:`` of a task.yaml (for file-based tasks)."""

    fields: list[str]
    label_field: str = "label"
    label_values: dict[str, str] | None = None  # raw value -> label word (its order is the choice order)
    choices_field: str | None = None           # or: each row carries its own answer options
    contains: dict[str, str] = field(default_factory=dict)  # field -> text every row's value must contain
    local_folder: str | None = None
    local_splits: dict[str, list[FileSpec]] = field(default_factory=dict)
    hub: dict[str, Any] | None = None
    splits: tuple[str, ...] = ()

    @property
    def labels(self) -> list[str] | None:
        return list(self.label_values.values()) if self.label_values else None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"splits": list(self.splits), "fields": self.fields}
        if self.label_values:
            out["labels"] = self.labels
        if self.local_folder:
            out["local"] = {"folder": self.local_folder,
                            "files": {s: [f.file for f in fs] for s, fs in self.local_splits.items()}}
        if self.hub:
            out["hub"] = self.hub
        return out


def _bad(where: str, msg: str) -> UsageError:
    return UsageError(f"Task file {where}: {msg} See docs/tasks.md for the task schema.")


def parse_data_spec(raw: dict[str, Any], where: str) -> DataSpec:
    """Check the ``data:`` mapping of a task.yaml and build its spec."""
    fields_ = raw.get("fields")
    if not isinstance(fields_, list) or not fields_ or not all(isinstance(f, str) for f in fields_):
        raise _bad(where, "data.fields must list the record fields the prompt uses (e.g. [sentence]).")
    label = raw.get("label") or {}
    if not isinstance(label, dict):
        raise _bad(where, "data.label must be a mapping: {field: label, values: {raw: word, ...}} or "
                   "{field: label, choices_field: choices}.")
    values, choices_field = label.get("values"), label.get("choices_field")
    if (values is None) == (choices_field is None):
        raise _bad(where, "data.label needs exactly one of 'values' (raw label -> label word, for classification) "
                   "or 'choices_field' (each row has its own answer options; the label is their index).")
    if values is not None:
        if isinstance(values, list):
            values = {str(i): str(v) for i, v in enumerate(values)}
        if not isinstance(values, dict) or len(values) < 2:
            raise _bad(where, "data.label.values must map at least two raw labels to label words.")
        values = {str(k): str(v) for k, v in values.items()}
        if len(set(values.values())) != len(values):
            raise _bad(where, "data.label.values maps two raw labels to the same word.")
    spec = DataSpec(fields=list(fields_), label_field=str(label.get("field", "label")), label_values=values,
                    choices_field=str(choices_field) if choices_field else None)
    contains = raw.get("contains") or {}
    if not isinstance(contains, dict) or not all(k in spec.fields and isinstance(v, str) and v
                                                 for k, v in contains.items()):
        raise _bad(where, "data.contains must map fields of data.fields to a text every row's value must "
                   "contain (e.g. {sentence: '_'}).")
    spec.contains = {str(k): str(v) for k, v in contains.items()}
    local, hub = raw.get("local"), raw.get("hub")
    if local is None and hub is None:
        raise _bad(where, "data needs 'local' (files in the data folder) and/or 'hub' (a hub dataset).")
    splits: set[str] = set()
    if local is not None:
        if not isinstance(local, dict) or "folder" not in local or not isinstance(local.get("splits"), dict):
            raise _bad(where, "data.local needs 'folder' and 'splits: {train: FILE, test: FILE}'.")
        spec.local_folder = str(local["folder"])
        defaults = {k: local[k] for k in ("format", "header", "columns", "delimiter") if k in local}
        for split, files in local["splits"].items():
            items = files if isinstance(files, list) else [files]
            spec.local_splits[str(split)] = [_file_spec({**defaults, **(i if isinstance(i, dict) else {"file": i})},
                                                        where, str(split)) for i in items]
        splits |= set(spec.local_splits)
    if hub is not None:
        if not isinstance(hub, dict) or "path" not in hub or not isinstance(hub.get("splits"), dict):
            raise _bad(where, "data.hub needs 'path' (a hub dataset id) and 'splits: {train: ..., test: ...}'.")
        spec.hub = {"path": str(hub["path"]), "name": hub.get("name"), "splits": dict(hub["splits"]),
                    "columns": dict(hub.get("columns") or {}), "label_values": hub.get("label_values"),
                    "label_index": hub.get("label_index")}
        li = spec.hub["label_index"]
        if li is not None and not (isinstance(li, dict) and "field" in li and ({"among", "base"} & set(li))):
            raise _bad(where, "data.hub.label_index must be {field: F, among: PATH} (the label is the position of "
                       "F's value in the list at PATH) or {field: F, base: 1} (F counts from 1).")
        splits |= set(hub["splits"])
    if "test" not in splits:
        raise _bad(where, "the data has no 'test' split: every task is scored on its held-out 'test' split.")
    spec.splits = tuple(s for s in ("train", "validation", "test") if s in splits) + tuple(
        sorted(splits - {"train", "validation", "test"}))
    return spec


def _file_spec(raw: dict[str, Any], where: str, split: str) -> FileSpec:
    if "file" not in raw:
        raise _bad(where, f"data.local.splits.{split} needs a file name.")
    fmt = str(raw.get("format") or _guess_format(str(raw["file"])))
    if fmt not in FORMATS:
        raise _bad(where, f"data.local format {fmt!r} (split {split}) is not one of {', '.join(FORMATS)}.")
    columns = raw.get("columns")
    if columns is not None and (not isinstance(columns, list) or not all(isinstance(c, str) for c in columns)):
        raise _bad(where, f"data.local.columns (split {split}) must be a list of column names.")
    header = bool(raw.get("header", True))
    if fmt in ("tsv", "delimited") and not header and not columns:
        raise _bad(where, f"split {split}: a {fmt} file without a header needs 'columns'.")
    delimiter = str(raw.get("delimiter", "\t" if fmt == "tsv" else ","))
    if fmt == "delimited" and "delimiter" not in raw:
        raise _bad(where, f"split {split}: format 'delimited' needs a 'delimiter' (e.g. ';').")
    return FileSpec(file=str(raw["file"]), format=fmt, header=header, columns=columns, delimiter=delimiter)


def _guess_format(name: str) -> str:
    for ext, fmt in ((".tsv", "tsv"), (".jsonl", "jsonl"), (".json", "json")):
        if name.endswith(ext):
            return fmt
    return "?"


# ---- parsers: each yields (line number, row dict) ----------------------------------------------------
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


# ---- normalization ------------------------------------------------------------------------------------
def normalize(row: dict[str, Any], spec: DataSpec, where: str, label_values: dict[str, str] | None = None
              ) -> dict[str, Any]:
    """The record the lm-eval YAML reads: the task's fields, ``choices`` and the gold ``label`` index."""
    out: dict[str, Any] = {}
    for f in spec.fields:
        value = row.get(f)
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where}: field {f!r} is missing or empty (the row has: {', '.join(map(str, row))}).")
        out[f] = " ".join(value.split())
        if f in spec.contains and spec.contains[f] not in out[f]:
            raise DataError(f"{where}: field {f!r} must contain {spec.contains[f]!r} (the prompt template needs "
                            f"it): {out[f][:80]!r}")
    if spec.label_field not in row:
        raise DataError(f"{where}: no label field {spec.label_field!r} (the row has: {', '.join(map(str, row))}).")
    raw = row[spec.label_field]
    if spec.choices_field:
        choices = row.get(spec.choices_field)
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c.strip()
                                                                           for c in choices):
            raise DataError(f"{where}: field {spec.choices_field!r} must be a list of at least two non-empty "
                            "answer strings.")
        try:
            index = int(raw)
        except (TypeError, ValueError):
            index = -1
        if isinstance(raw, bool) or not 0 <= index < len(choices):
            raise DataError(f"{where}: label {raw!r} is not an index into the row's {len(choices)} choices "
                            f"(valid: 0..{len(choices) - 1}).")
        out["choices"] = [" ".join(c.split()) for c in choices]
        out["label"] = index
        return out
    values = label_values or spec.label_values or {}
    key = str(raw).strip()
    if key not in values:
        raise DataError(f"{where}: label {raw!r} is not in the task's label set; valid labels: "
                        f"{', '.join(map(repr, values))}.")
    out["choices"] = list(values.values())
    out["label"] = list(values).index(key)
    return out


# ---- sources -----------------------------------------------------------------------------------------
@dataclass
class PreparedData:
    """Normalized data of one task: where it lies, where it came from, how many rows per split."""

    folder: Path
    source: dict[str, Any]
    sizes: dict[str, int]


def data_root(explicit: str | os.PathLike | None) -> Path | None:
    """The local data folder: ``--data-dir``, else ``$PEFTBENCH_DATA_DIR``, else none."""
    value = explicit or os.environ.get(DATA_DIR_ENV)
    if not value:
        return None
    root = Path(value).expanduser()
    if not root.is_dir():
        src = "--data-dir" if explicit else f"${DATA_DIR_ENV}"
        raise DataError(f"{src} {value}: no such folder. It should hold one folder per dataset, laid out like "
                        "the shared data folder (e.g. sst2/data__SST-2__train.tsv).")
    return root


def local_files(spec: DataSpec, root: Path | None) -> dict[str, list[Path]] | None:
    """The task's local files when the data folder has its dataset folder, else ``None``."""
    if root is None or spec.local_folder is None or not (root / spec.local_folder).is_dir():
        return None
    return {split: [root / spec.local_folder / f.file for f in files] for split, files in spec.local_splits.items()}


def availability(spec: DataSpec, root: Path | None) -> tuple[bool, str]:
    """(available here, where from) — for ``peftbench tasks``."""
    files = local_files(spec, root)
    if files is not None:
        missing = [str(p) for ps in files.values() for p in ps if not p.is_file()]
        return (not missing, f"local {root / spec.local_folder}" + (f" (missing {', '.join(missing)})"
                                                                    if missing else ""))
    if spec.hub:
        return True, f"hub {spec.hub['path']}" + (f"/{spec.hub['name']}" if spec.hub.get("name") else "") + \
            " (needs hub access)"
    return False, "no data: pass --data-dir (or set $PEFTBENCH_DATA_DIR)"


def prepare(task_name: str, spec: DataSpec, root: Path | None, cache_dir: Path, need_train: bool) -> PreparedData:
    """Read, check and normalize a task's data into the cache (once per source fingerprint)."""
    files = local_files(spec, root)
    if files is not None:
        return _prepare_local(task_name, spec, files, cache_dir, need_train)
    if spec.hub:
        return _prepare_hub(task_name, spec, cache_dir, need_train)
    hint = (f"Pass --data-dir (or set ${DATA_DIR_ENV}) to a folder that holds {spec.local_folder}/"
            if spec.local_folder else "This task names no local files")
    where = f" (looked in {root})" if root else ""
    raise DataError(f"task {task_name!r}: no data found{where}. {hint}; the task names no hub dataset to fall "
                    "back on.")


def _check_splits(task_name: str, sizes: dict[str, int], need_train: bool, origin: str) -> None:
    if need_train and "train" not in sizes:
        raise DataError(f"task {task_name!r} has no train split ({origin}), but a method is asked to train on it. "
                        "Use it as an evaluation-only task with --retention, or add a train split.")
    for split, n in sizes.items():
        if n == 0:
            raise DataError(f"task {task_name!r}: split {split!r} is empty ({origin}).")


def _fingerprint(task_name: str, spec: DataSpec, sources: list[str]) -> str:
    h = hashlib.sha256(json.dumps([task_name, spec.describe(), spec.label_field, spec.label_values, spec.choices_field,
                                   spec.contains,
                                   {s: [vars(f) for f in fs] for s, fs in spec.local_splits.items()}, sources],
                                  sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _write_split(folder: Path, split: str, records: list[dict[str, Any]]) -> None:
    def write(fh: Any) -> None:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")

    atomic_write(folder / f"{split}.jsonl", write)


def _finish(task_name: str, spec: DataSpec, cache_dir: Path, fingerprint: str, source: dict[str, Any],
            records: dict[str, list[dict[str, Any]]]) -> PreparedData:
    folder = cache_dir / "data" / task_name / fingerprint
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in records.items():
        _write_split(folder, split, rows)
    sizes = {s: len(r) for s, r in records.items()}
    write_json(folder / ".source.json", {"source": source, "sizes": sizes})
    return PreparedData(folder=folder, source=source, sizes=sizes)


def _cached(folder: Path, splits: list[str]) -> PreparedData | None:
    meta = folder / ".source.json"
    if meta.is_file() and all((folder / f"{s}.jsonl").is_file() for s in splits):
        info = json.loads(meta.read_text())
        return PreparedData(folder=folder, source=info["source"], sizes=info["sizes"])
    return None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _prepare_local(task_name: str, spec: DataSpec, files: dict[str, list[Path]], cache_dir: Path,
                   need_train: bool) -> PreparedData:
    missing = [p for ps in files.values() for p in ps if not p.is_file()]
    if missing:
        raise DataError(f"task {task_name!r}: data file(s) not found: {', '.join(map(str, missing))}. The task "
                        f"expects them in the data folder under {spec.local_folder}/.")
    if need_train and "train" not in files:
        _check_splits(task_name, {s: 1 for s in files}, need_train, f"local folder {spec.local_folder}")
    digests = {str(p): file_sha256(p) for ps in files.values() for p in ps}
    # split -> file digests in the task's file order: swapping two files' contents changes the fingerprint
    fingerprint = _fingerprint(task_name, spec, [json.dumps({s: [digests[str(p)] for p in ps]
                                                             for s, ps in files.items()}, sort_keys=True)])
    folder = cache_dir / "data" / task_name / fingerprint
    hit = _cached(folder, list(files))
    if hit is not None:
        _check_splits(task_name, hit.sizes, need_train, f"local folder {spec.local_folder}")
        return hit
    records: dict[str, list[dict[str, Any]]] = {}
    first = next(iter(files))  # the dataset folder: the first file's path less the task's relative file name
    dataset_dir = files[first][0].resolve().parents[len(Path(spec.local_splits[first][0].file).parts) - 1]
    source: dict[str, Any] = {"kind": "local", "folder": str(dataset_dir), "splits": {}}
    for split, paths in files.items():
        rows: list[dict[str, Any]] = []
        for path, fspec in zip(paths, spec.local_splits[split], strict=True):
            n0 = len(rows)
            for lineno, row in READERS[fspec.format](path, fspec):
                rows.append(normalize(row, spec, f"{path}:{lineno}"))
            if len(rows) == n0:
                raise DataError(f"task {task_name!r}: {path} has no rows (split {split!r}).")
        records[split] = rows
        source["splits"][split] = [{"file": f.file, "sha256": digests[str(p)]}
                                   for p, f in zip(paths, spec.local_splits[split], strict=True)]
    sizes = {s: len(r) for s, r in records.items()}
    _check_splits(task_name, sizes, need_train, f"local folder {spec.local_folder}")
    return _finish(task_name, spec, cache_dir, fingerprint, source, records)


def _prepare_hub(task_name: str, spec: DataSpec, cache_dir: Path, need_train: bool) -> PreparedData:
    hub = spec.hub or {}
    _check_splits(task_name, {s: 1 for s in hub["splits"]}, need_train, f"hub dataset {hub['path']}")
    try:
        import datasets
    except ImportError:  # pragma: no cover - a dependency
        raise DataError("the 'datasets' package is needed to read hub datasets.") from None
    label_values = {str(k): str(v) for k, v in (hub.get("label_values") or {}).items()} or None
    if label_values and spec.label_values and list(label_values.values()) != spec.labels:
        raise DataError(f"task {task_name!r}: data.hub.label_values must map onto the same label words, in the same "
                        f"order, as data.label.values ({', '.join(spec.labels or [])}).")
    records: dict[str, list[dict[str, Any]]] = {}
    source: dict[str, Any] = {"kind": "hub", "path": hub["path"], "name": hub.get("name"), "splits": {}}
    for split, hub_split in hub["splits"].items():
        try:
            ds = datasets.load_dataset(hub["path"], hub.get("name"), split=hub_split)
        except Exception as e:  # no network, unknown id, ...
            raise DataError(f"task {task_name!r}: the hub dataset {hub['path']!r} (split {hub_split!r}) could not be "
                            f"loaded ({type(e).__name__}: {str(e)[:200]}). Pass --data-dir (or set "
                            f"${DATA_DIR_ENV}) to a local data folder instead.") from None
        rows = []
        for i, row in enumerate(ds, start=1):
            where = f"hub {hub['path']} {hub_split} row {i}"
            rows.append(normalize(hub_row(dict(row), hub, where), spec, where, label_values))
        records[split] = rows
        source["splits"][split] = {"split": hub_split, "fingerprint": getattr(ds, "_fingerprint", None),
                                   "rows": len(rows)}
    sizes = {s: len(r) for s, r in records.items()}
    _check_splits(task_name, sizes, need_train, f"hub dataset {hub['path']}")
    fingerprint = _fingerprint(task_name, spec, [json.dumps(source, sort_keys=True, default=str)])
    return _finish(task_name, spec, cache_dir, fingerprint, source, records)


def _path(row: dict[str, Any], path: str, where: str) -> Any:
    value: Any = row
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise DataError(f"{where}: no field {path!r} (the row has: {', '.join(map(str, row))}).")
        value = value[part]
    return value


def hub_row(row: dict[str, Any], hub: dict[str, Any], where: str) -> dict[str, Any]:
    """Map a hub row onto the task's fields. ``columns`` values: ``a.b`` (a nested field), a list of fields
    (their values as a list: answer options), or a format string (``"{context} {question}"``).
    ``label_index``: the label is the position of a field's value in a list (``among``), or a 1-based number."""
    out = dict(row)
    for new, spec in (hub.get("columns") or {}).items():
        if isinstance(spec, list):
            out[new] = [_path(row, str(p), where) for p in spec]
        elif "{" in str(spec):
            try:
                out[new] = str(spec).format(**row)
            except (KeyError, IndexError) as e:
                raise DataError(f"{where}: column template {spec!r} names a field the row lacks ({e}).") from None
        else:
            out[new] = _path(row, str(spec), where)
    li = hub.get("label_index")
    if li:
        value = _path(row, str(li["field"]), where)
        if "among" in li:
            options = _path(row, str(li["among"]), where)
            if value not in options:
                raise DataError(f"{where}: label {value!r} is not one of {options!r}.")
            out["label"] = list(options).index(value)
        else:
            try:
                out["label"] = int(value) - int(li["base"])
            except (TypeError, ValueError):
                raise DataError(f"{where}: label {value!r} is not a number.") from None
    return out


def count_rows(spec: DataSpec, root: Path | None) -> dict[str, int] | None:
    """Rows per split of the local files (cheap: lines or list length), for ``peftbench tasks``."""
    files = local_files(spec, root)
    if files is None or any(not p.is_file() for ps in files.values() for p in ps):
        return None
    sizes = {}
    for split, paths in files.items():
        n = 0
        for p, f in zip(paths, spec.local_splits[split], strict=True):
            if f.format == "json":
                try:
                    n += len(json.loads(p.read_text(encoding="utf-8-sig")))
                except (json.JSONDecodeError, TypeError):
                    return None
            else:
                with open(p, encoding="utf-8-sig", errors="replace") as fh:
                    lines = sum(1 for line in fh if line.strip())
                n += max(0, lines - (1 if f.format in ("tsv", "delimited") and f.header else 0))
        sizes[split] = n
    return sizes

