"""The ``data:`` mapping of a task.yaml: which fields the prompt uses, the label set, and where the raw
files (a local data folder) or the hub dataset are. Checked completely when the task is loaded."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from peftbench.errors import UsageError

FORMATS = ("tsv", "delimited", "json", "jsonl")
SPLIT_ORDER = ("train", "validation", "test")  # then any other split, by name


class DataError(UsageError):
    """A task's data is missing or malformed (names the file and line)."""


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
    choices_field = label.get("choices_field")
    spec = DataSpec(fields=list(fields_), label_field=str(label.get("field", "label")),
                    label_values=_label_values(label, where),
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
        spec.local_folder, spec.local_splits = _local_files(local, where)
        splits |= set(spec.local_splits)
    if hub is not None:
        spec.hub = _hub_dataset(hub, where)
        splits |= set(hub["splits"])
    if "test" not in splits:
        raise _bad(where, "the data has no 'test' split: every task is scored on its held-out 'test' split.")
    spec.splits = tuple(s for s in SPLIT_ORDER if s in splits) + tuple(sorted(splits - set(SPLIT_ORDER)))
    return spec


def _label_values(label: dict[str, Any], where: str) -> dict[str, str] | None:
    """``label.values`` as raw label -> label word (a list counts from 0), or None for ``choices_field``."""
    values, choices_field = label.get("values"), label.get("choices_field")
    if (values is None) == (choices_field is None):
        raise _bad(where, "data.label needs exactly one of 'values' (raw label -> label word, for classification) "
                   "or 'choices_field' (each row has its own answer options; the label is their index).")
    if values is None:
        return None
    if isinstance(values, list):
        values = {str(i): str(v) for i, v in enumerate(values)}
    if not isinstance(values, dict) or len(values) < 2:
        raise _bad(where, "data.label.values must map at least two raw labels to label words.")
    values = {str(k): str(v) for k, v in values.items()}
    if len(set(values.values())) != len(values):
        raise _bad(where, "data.label.values maps two raw labels to the same word.")
    return values


def _local_files(local: Any, where: str) -> tuple[str, dict[str, list[FileSpec]]]:
    """``data.local``: the dataset folder and each split's files (folder-wide format options as defaults)."""
    if not isinstance(local, dict) or "folder" not in local or not isinstance(local.get("splits"), dict):
        raise _bad(where, "data.local needs 'folder' and 'splits: {train: FILE, test: FILE}'.")
    defaults = {k: local[k] for k in ("format", "header", "columns", "delimiter") if k in local}
    splits = {}
    for split, files in local["splits"].items():
        items = files if isinstance(files, list) else [files]
        splits[str(split)] = [_file_spec({**defaults, **(i if isinstance(i, dict) else {"file": i})}, where, str(split))
                              for i in items]
    return str(local["folder"]), splits


def _hub_dataset(hub: Any, where: str) -> dict[str, Any]:
    """``data.hub``: the dataset id, its splits and how its rows map onto the task's fields."""
    if not isinstance(hub, dict) or "path" not in hub or not isinstance(hub.get("splits"), dict):
        raise _bad(where, "data.hub needs 'path' (a hub dataset id) and 'splits: {train: ..., test: ...}'.")
    out = {"path": str(hub["path"]), "name": hub.get("name"), "splits": dict(hub["splits"]),
           "columns": dict(hub.get("columns") or {}), "label_values": hub.get("label_values"),
           "label_index": hub.get("label_index")}
    li = out["label_index"]
    if li is not None and not (isinstance(li, dict) and "field" in li and ({"among", "base"} & set(li))):
        raise _bad(where, "data.hub.label_index must be {field: F, among: PATH} (the label is the position of "
                   "F's value in the list at PATH) or {field: F, base: 1} (F counts from 1).")
    return out


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
