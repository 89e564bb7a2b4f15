"""``docs/results-schema.md``, generated from the JSON Schemas in ``peftbench/results/schema/`` (a test keeps it
current). Regenerate with ``python -m peftbench.results.schema_docs > docs/results-schema.md``."""

from __future__ import annotations

from typing import Any

from peftbench.results.store import schema


def _type(spec: dict[str, Any]) -> str:
    if "enum" in spec:
        return " \\| ".join(f"`{v}`" for v in spec["enum"])
    if "const" in spec:
        return f"`{spec['const']}`"
    t = spec.get("type", "any")
    return " or ".join(t) if isinstance(t, list) else t


def _rows(props: dict[str, Any], required: list[str], prefix: str = "") -> list[str]:
    out = []
    for name, spec in props.items():
        path = f"{prefix}{name}"
        desc = spec.get("description", "").replace("|", "\\|")
        out.append(f"| `{path}` | {_type(spec)} | {'yes' if name in required and not prefix else ''} | {desc} |")
        if isinstance(spec.get("properties"), dict):
            out += _rows(spec["properties"], spec.get("required", []), prefix=f"{path}.")
    return out


def schema_markdown() -> str:
    out = ["# Result files: the schema", "",
           "Generated from `peftbench/results/schema/*.schema.json` (JSON Schema 2020-12) by `python -m peftbench.results.schema_docs`;",
           "a test keeps this file current. peftbench checks every run file against its schema when it writes it (a",
           "mismatch is reported, the file is kept) and when `peftbench report` or `peftbench claims` reads it (a",
           "mismatch is an error naming the file and the field). `session.json` records the sha256 of every run file;",
           "a run file changed or truncated afterwards is refused, by name. `peftbench serve-bench` checks each",
           "method's serving file against the serving schema when it writes it (a mismatch is reported, the file is",
           "kept).", ""]
    for kind in ("session", "run", "serving"):
        s = schema(kind)
        out += [f"## {s['title']}", "", s["description"], "", "| field | type | required | meaning |",
                "|---|---|---|---|", *_rows(s["properties"], s.get("required", [])), ""]
    return "\n".join(out)


if __name__ == "__main__":
    print(schema_markdown(), end="")
