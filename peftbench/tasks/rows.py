"""One raw row -> the record the lm-eval YAML reads: the task's fields, then for a multiple-choice task
``choices`` (the label words, or the row's own answer options) and ``label`` (the index of the gold choice),
for a generative one ``answer`` (the text the model is to write). ``map_row`` first derives the
task's fields from a raw row (a hub dataset's, or a local file's with ``data.local.map``)."""

from __future__ import annotations

from typing import Any

from peftbench.tasks.data_spec import DataError, DataSpec


def normalize(row: dict[str, Any], spec: DataSpec, where: str, label_values: dict[str, str] | None = None
              ) -> dict[str, Any]:
    """The record the lm-eval YAML reads: the task's fields, and ``choices`` and the gold ``label`` index (or,
    for a generative task, ``answer``)."""
    out: dict[str, Any] = {}
    for f in spec.fields:
        value = row.get(f)
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where}: field {f!r} is missing or empty (the row has: {', '.join(map(str, row))}).")
        out[f] = " ".join(value.split())
        if f in spec.contains and spec.contains[f] not in out[f]:
            raise DataError(f"{where}: field {f!r} must contain {spec.contains[f]!r} (the prompt template needs "
                            f"it): {out[f][:80]!r}")
    if spec.answer_field is not None:
        out["answer"] = _answer_text(row, spec, where)
        return out
    if spec.label_field not in row:
        raise DataError(f"{where}: no label field {spec.label_field!r} (the row has: {', '.join(map(str, row))}).")
    raw = row[spec.label_field]
    if spec.choices_field:
        out["choices"], out["label"] = _own_choices(row, spec.choices_field, raw, where)
        return out
    values = label_values or spec.label_values or {}
    key = str(raw).strip()
    if key not in values:
        raise DataError(f"{where}: label {raw!r} is not in the task's label set; valid labels: "
                        f"{', '.join(map(repr, values))}.")
    out["choices"] = list(values.values())
    out["label"] = list(values).index(key)
    return out


def _answer_text(row: dict[str, Any], spec: DataSpec, where: str) -> str:
    """A generative record's ``answer``: the row's answer text with its line breaks kept (GSM8K's worked
    solution is one step a line) and its ends stripped; only ``\r\n`` becomes ``\n``."""
    field = str(spec.answer_field)
    value = row.get(field)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: answer field {field!r} is missing or empty (the row has: {', '.join(map(str, row))}).")
    text = value.replace("\r\n", "\n").strip()
    if field in spec.contains and spec.contains[field] not in text:
        raise DataError(f"{where}: answer field {field!r} must contain {spec.contains[field]!r}: {text[-80:]!r}")
    return text


def _own_choices(row: dict[str, Any], choices_field: str, raw: Any, where: str) -> tuple[list[str], int]:
    """A row that carries its own answer options: the options (whitespace collapsed) and the gold index."""
    choices = row.get(choices_field)
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c.strip()
                                                                       for c in choices):
        raise DataError(f"{where}: field {choices_field!r} must be a list of at least two non-empty "
                        "answer strings.")
    try:
        index = int(raw)
    except (TypeError, ValueError):
        index = -1
    if isinstance(raw, bool) or not 0 <= index < len(choices):
        raise DataError(f"{where}: label {raw!r} is not an index into the row's {len(choices)} choices "
                        f"(valid: 0..{len(choices) - 1}).")
    return [" ".join(c.split()) for c in choices], index


def _path(row: dict[str, Any], path: str, where: str) -> Any:
    """The value at ``a.b`` (nested fields); through a list of objects it takes each one's field, so
    ``question.choices.text`` of ``{"question": {"choices": [{"text": ..}, ..]}}`` is the list of texts."""
    value: Any = row
    for part in path.split("."):
        if isinstance(value, list) and value and all(isinstance(v, dict) and part in v for v in value):
            value = [v[part] for v in value]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise DataError(f"{where}: no field {path!r} (the row has: {', '.join(map(str, row))}).")
    return value


def hub_row(row: dict[str, Any], hub: dict[str, Any], where: str) -> dict[str, Any]:
    """Map a hub row onto the task's fields (``data.hub``'s ``columns`` and ``label_index``: see ``map_row``)."""
    return map_row(row, hub.get("columns"), hub.get("label_index"), where)


def map_row(row: dict[str, Any], columns: dict[str, Any] | None, label_index: dict[str, Any] | None,
            where: str) -> dict[str, Any]:
    """A raw row (hub or local) with the task's fields derived. ``columns`` values: ``a.b`` (a nested field),
    a list of fields (their values as a list: answer options in separate columns), or a format string
    (``"{context} {question}"``). ``label_index``: the label is the position of a field's value in a list
    (``among``: the list's field path, or the list itself, e.g. letter keys [A, B, C, D]), or a number
    counting from ``base``."""
    out = dict(row)
    for new, spec in (columns or {}).items():
        if isinstance(spec, list):
            out[new] = [_path(row, str(p), where) for p in spec]
        elif "{" in str(spec):
            try:
                out[new] = str(spec).format(**row)
            except (KeyError, IndexError) as e:
                raise DataError(f"{where}: column template {spec!r} names a field the row lacks ({e}).") from None
        else:
            out[new] = _path(row, str(spec), where)
    li = label_index
    if li:
        value = _path(row, str(li["field"]), where)
        if "among" in li:
            if isinstance(li["among"], list):  # literal answer keys, compared as text
                options, value = list(li["among"]), str(value).strip()
            else:
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
