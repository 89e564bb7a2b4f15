"""The ``data:`` mapping of a task.yaml: which fields the prompt uses, the label set, and where the raw
files (a local data folder) or the hub dataset are. Checked completely when the task is loaded."""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Any

from peftbench.errors import UsageError, did_you_mean

FORMATS = ("tsv", "delimited", "json", "jsonl", "label_first")
SPLIT_ORDER = ("train", "validation", "test")  # the splits a task may have, in this order
# the keys each mapping of ``data:`` may hold (anything else is a misspelling, reported with a did-you-mean)
DATA_KEYS = ("fields", "label", "answer", "contains", "local", "hub", "validation")
LABEL_KEYS = ("field", "values", "choices_field")
FILE_KEYS = ("file", "format", "header", "columns", "delimiter", "encoding")
LOCAL_KEYS = ("folder", "splits", "map", "label_index", *FILE_KEYS[1:])
HUB_KEYS = ("path", "name", "splits", "columns", "label_values", "label_index")
LABEL_INDEX_KEYS = ("field", "among", "base")
VALIDATION_KEYS = ("size", "seed")


class DataError(UsageError):
    """A task's data is missing or malformed (names the file and line)."""


@dataclass
class FileSpec:
    """One raw file of a split, and how to read it."""

    file: str
    format: str
    header: bool = True
    columns: list[str] | None = None
    delimiter: str | list[str] | None = "\t"  # label_first: one per column boundary, or None (any whitespace)
    encoding: str = "utf-8-sig"


@dataclass(frozen=True)
class ValidationSpec:
    """``data.validation``: how many training rows to hold out for validation, picked by ``seed``. The size
    ``None`` is the default: 10 % of the training rows, at most 500 (none for a train split under 5 rows)."""

    size: int | None = None
    seed: int = 0

    def describe(self) -> dict[str, Any]:
        return {"from": "train", "size": self.size, "seed": self.seed}  # size None: the default


@dataclass
class DataSpec:
    """``data:`` of a task.yaml (for file-based tasks)."""

    fields: list[str]
    label_field: str = "label"
    label_values: dict[str, str] | None = None  # raw value -> label word (its order is the choice order)
    choices_field: str | None = None           # or: each row carries its own answer options
    answer_field: str | None = None            # or (a generative task): the field holding the answer text
    contains: dict[str, str] = field(default_factory=dict)  # field -> text every row's value must contain
    local_folder: str | None = None
    local_splits: dict[str, list[FileSpec]] = field(default_factory=dict)
    local_map: dict[str, Any] = field(default_factory=dict)  # as hub.columns, for local rows
    local_label_index: dict[str, Any] | None = None          # as hub.label_index, for local rows
    hub: dict[str, Any] | None = None
    splits: tuple[str, ...] = ()
    validation: ValidationSpec = field(default_factory=ValidationSpec)  # when the data has no validation split

    @property
    def generative(self) -> bool:
        """The records hold an answer text to write (``answer``), not choices and a gold index."""
        return self.answer_field is not None

    @property
    def labels(self) -> list[str] | None:
        return list(self.label_values.values()) if self.label_values else None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"splits": list(self.splits), "fields": self.fields}
        if self.label_values:
            out["labels"] = self.labels
        if self.answer_field:
            out["answer"] = self.answer_field
        if self.local_folder:
            out["local"] = {"folder": self.local_folder,
                            "files": {s: [f.file for f in fs] for s, fs in self.local_splits.items()}}
            out["local"].update({k: v for k, v in (("map", self.local_map),
                                                   ("label_index", self.local_label_index)) if v})
        if self.hub:
            out["hub"] = self.hub
        return out


def _bad(where: str, msg: str) -> UsageError:
    return UsageError(f"Task file {where}: {msg} See docs/tasks.md for the task schema.")


def check_keys(raw: dict[Any, Any], valid: tuple[str, ...] | list[str], where: str, at: str = "") -> None:
    """A key of the mapping at ``at`` (a dotted path; '' for the top level) that is not one of ``valid`` is an
    error naming the file, the key's path, the closest valid key and every valid one."""
    for key in raw:
        if key not in valid:
            there = f"under '{at}'" if at else "at the top level"
            path = f"{at}.{key}" if at else str(key)
            raise _bad(where, f"unknown key {path!r} ({there}).{did_you_mean(str(key), valid)} Valid keys {there}: "
                       f"{', '.join(sorted(valid))}.")


def parse_data_spec(raw: dict[str, Any], where: str) -> DataSpec:
    """Check the ``data:`` mapping of a task.yaml and build its spec."""
    check_keys(raw, DATA_KEYS, where, "data")
    fields_ = raw.get("fields")
    if not isinstance(fields_, list) or not fields_ or not all(isinstance(f, str) for f in fields_):
        raise _bad(where, "data.fields must list the record fields the prompt uses (e.g. [sentence]).")
    spec = _answer_spec(raw, fields_, where) if "answer" in raw else _label_spec(raw, fields_, where)
    contains = raw.get("contains") or {}
    checked = [*spec.fields, *([spec.answer_field] if spec.answer_field else [])]
    if not isinstance(contains, dict) or not all(k in checked and isinstance(v, str) and v
                                                 for k, v in contains.items()):
        raise _bad(where, "data.contains must map fields of data.fields (or data.answer) to a text every row's "
                   "value must contain (e.g. {sentence: '_'}).")
    spec.contains = {str(k): str(v) for k, v in contains.items()}
    local, hub = raw.get("local"), raw.get("hub")
    if local is None and hub is None:
        raise _bad(where, "data needs 'local' (files in the data folder) and/or 'hub' (a hub dataset).")
    splits: set[str] = set()
    if local is not None:
        spec.local_folder, spec.local_splits = _local_files(local, where)
        spec.local_map = _column_map(local.get("map"), where, "data.local.map")
        spec.local_label_index = _label_index(local.get("label_index"), where, "data.local.label_index")
        splits |= set(spec.local_splits)
    if hub is not None:
        spec.hub = _hub_dataset(hub, where)
        splits |= set(hub["splits"])
    if (spec.local_label_index or (spec.hub or {}).get("label_index")) and spec.generative:
        raise _bad(where, "label_index computes a multiple-choice label; a generative task (data.answer) has none.")
    if (spec.local_label_index or (spec.hub or {}).get("label_index")) and spec.label_field != "label":
        raise _bad(where, f"data.label.field is {spec.label_field!r}, but label_index computes the record's 'label' "
                   "(the gold option's index): leave data.label.field out (it defaults to 'label').")
    if "test" not in splits:
        raise _bad(where, "the data has no 'test' split: every task is scored on its held-out 'test' split.")
    spec.splits = tuple(s for s in SPLIT_ORDER if s in splits) + tuple(sorted(splits - set(SPLIT_ORDER)))
    if "validation" in raw:
        if "validation" in splits or "train" not in splits:
            raise _bad(where, "data.validation carves a validation split out of the train split; this data "
                       + ("has its own validation split." if "validation" in splits else "has no train split."))
        spec.validation = parse_validation(raw["validation"], where)
    return spec


def _label_spec(raw: dict[str, Any], fields_: list[str], where: str) -> DataSpec:
    """A multiple-choice task's ``data.label``: label words shared by every row, or each row's own options."""
    label = raw.get("label") or {}
    if not isinstance(label, dict):
        raise _bad(where, "data.label must be a mapping: {field: label, values: {raw: word, ...}} or "
                   "{field: label, choices_field: choices} (or, for a generative task, data.answer: FIELD).")
    check_keys(label, LABEL_KEYS, where, "data.label")
    choices_field = label.get("choices_field")
    return DataSpec(fields=list(fields_), label_field=str(label.get("field", "label")),
                    label_values=_label_values(label, where),
                    choices_field=str(choices_field) if choices_field else None)


def _answer_spec(raw: dict[str, Any], fields_: list[str], where: str) -> DataSpec:
    """A generative task's ``data.answer``: the raw row's field holding the text the model is to write."""
    answer = raw["answer"]
    if "label" in raw:
        raise _bad(where, "data has both 'label' (multiple choice: the model picks one of the choices) and "
                   "'answer' (generative: the model writes the answer); give one.")
    if not isinstance(answer, str) or not answer.strip():
        raise _bad(where, f"data.answer must name the row field holding the answer text (e.g. answer), not {answer!r}.")
    return DataSpec(fields=list(fields_), answer_field=answer)


def parse_validation(raw: Any, where: str) -> ValidationSpec:
    """``data.validation``: ``{size: N, seed: S}`` (either may be left out: 10 % of train at most 500; seed 0)."""
    if not isinstance(raw, dict):
        raise _bad(where, "data.validation must be a mapping {size: N, seed: S}: N training rows held out for "
                   "validation (default: 10 % of them, at most 500), picked by seed S (default 0).")
    check_keys(raw, VALIDATION_KEYS, where, "data.validation")
    for key, least in (("size", 1), ("seed", 0)):
        value = raw.get(key, least)
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise _bad(where, f"data.validation.{key} must be a whole number of at least {least}, not {value!r}.")
    return ValidationSpec(size=raw.get("size"), seed=int(raw.get("seed", 0)))


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
    check_keys(local, LOCAL_KEYS, where, "data.local")
    check_keys(local["splits"], SPLIT_ORDER, where, "data.local.splits")
    defaults = {k: local[k] for k in FILE_KEYS[1:] if k in local}
    splits = {}
    for split, files in local["splits"].items():
        items = files if isinstance(files, list) else [files]
        for i in items:
            if isinstance(i, dict):
                check_keys(i, FILE_KEYS, where, f"data.local.splits.{split}")
        splits[str(split)] = [_file_spec({**defaults, **(i if isinstance(i, dict) else {"file": i})}, where, str(split))
                              for i in items]
    return str(local["folder"]), splits


def _column_map(raw: Any, where: str, at: str) -> dict[str, Any]:
    """``columns`` of data.hub / ``map`` of data.local: a record field -> a field path (``a.b``), a list of
    fields (answer options in separate columns) or a ``"{a} {b}"`` template."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, str) or (isinstance(v, list) and v and all(
            isinstance(p, str) for p in v)) for v in raw.values()):
        raise _bad(where, f"{at} must map record fields to a field (a.b for a nested one), a list of fields (e.g. "
                   "choices: [sol1, sol2]) or a template ('{context} {question}').")
    return {str(k): v for k, v in raw.items()}


def _label_index(li: Any, where: str, at: str) -> dict[str, Any] | None:
    """``label_index``: the label is the position of ``field``'s value among a list (``among``: a field path
    holding the list, or the list itself, e.g. [A, B, C, D]), or ``field`` counts from ``base``."""
    if li is None:
        return None
    if isinstance(li, dict):
        check_keys(li, LABEL_INDEX_KEYS, where, at)
    among = li.get("among") if isinstance(li, dict) else None
    if not (isinstance(li, dict) and "field" in li and len({"among", "base"} & set(li)) == 1) or not (
            among is None or isinstance(among, str) or (isinstance(among, list) and len(among) >= 2)) or not (
            "base" not in li or (isinstance(li["base"], int) and not isinstance(li["base"], bool))):
        raise _bad(where, f"{at} must be {{field: F, among: PATH}} (the label is the position of F's value in the "
                   "list at PATH), {field: F, among: [A, B, C, D]} (letter answer keys) or {field: F, base: 1} "
                   "(F counts from 1).")
    return {**li, "among": [str(a) for a in among]} if isinstance(among, list) else dict(li)


def _hub_dataset(hub: Any, where: str) -> dict[str, Any]:
    """``data.hub``: the dataset id, its splits and how its rows map onto the task's fields."""
    if not isinstance(hub, dict) or "path" not in hub or not isinstance(hub.get("splits"), dict):
        raise _bad(where, "data.hub needs 'path' (a hub dataset id) and 'splits: {train: ..., test: ...}'.")
    check_keys(hub, HUB_KEYS, where, "data.hub")
    check_keys(hub["splits"], SPLIT_ORDER, where, "data.hub.splits")
    if hub.get("label_values") is not None and not isinstance(hub["label_values"], dict):
        raise _bad(where, "data.hub.label_values must map the hub's raw labels to the label words.")
    return {"path": str(hub["path"]), "name": hub.get("name"), "splits": dict(hub["splits"]),
            "columns": _column_map(hub.get("columns"), where, "data.hub.columns"),
            "label_values": hub.get("label_values"),
            "label_index": _label_index(hub.get("label_index"), where, "data.hub.label_index")}


def _file_spec(raw: dict[str, Any], where: str, split: str) -> FileSpec:
    if "file" not in raw:
        raise _bad(where, f"data.local.splits.{split} needs a file name.")
    fmt = str(raw.get("format") or _guess_format(str(raw["file"])))
    if fmt not in FORMATS:
        raise _bad(where, f"data.local format {fmt!r} (split {split}) is not one of {', '.join(FORMATS)}.")
    columns = raw.get("columns", ["label", "text"] if fmt == "label_first" else None)
    if columns is not None and (not isinstance(columns, list) or not all(isinstance(c, str) for c in columns)):
        raise _bad(where, f"data.local.columns (split {split}) must be a list of column names.")
    header = bool(raw.get("header", fmt != "label_first"))
    if fmt in ("tsv", "delimited") and not header and not columns:
        raise _bad(where, f"split {split}: a {fmt} file without a header needs 'columns'.")
    if fmt == "delimited" and "delimiter" not in raw:
        raise _bad(where, f"split {split}: format 'delimited' needs a 'delimiter' (e.g. ';').")
    encoding = str(raw.get("encoding", "utf-8-sig"))
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise _bad(where, f"split {split}: encoding {encoding!r} is not a text encoding Python knows (e.g. utf-8, "
                   "latin-1).") from None
    return FileSpec(file=str(raw["file"]), format=fmt, header=header, columns=columns,
                    delimiter=_delimiter(raw, fmt, columns, where, split), encoding=encoding)


def _delimiter(raw: dict[str, Any], fmt: str, columns: list[str] | None, where: str, split: str
               ) -> str | list[str] | None:
    """The column delimiter; for ``label_first`` lines, one delimiter for every boundary, a list of one per
    boundary (TREC's 'DESC:manner How ...': [':', ' ']), or none (any run of whitespace)."""
    value = raw.get("delimiter", "\t" if fmt == "tsv" else None if fmt == "label_first" else ",")
    if isinstance(value, list):
        if fmt != "label_first" or len(value) != len(columns or []) - 1 or not all(
                isinstance(d, str) and d for d in value):
            raise _bad(where, f"split {split}: a list of delimiters is for format label_first: one non-empty "
                       f"delimiter between each two of its {len(columns or [])} columns.")
        return [str(d) for d in value]
    if value is not None and not str(value):
        raise _bad(where, f"split {split}: the delimiter is empty.")
    return None if value is None else str(value)


def _guess_format(name: str) -> str:
    for ext, fmt in ((".tsv", "tsv"), (".jsonl", "jsonl"), (".json", "json")):
        if name.endswith(ext):
            return fmt
    return "?"
