"""Task data: find a task's raw files (or hub dataset), check every row, write normalized JSONL.

Where the data comes from, in this order:

1. a local data folder (``--data-dir`` or ``PEFTBENCH_DATA_DIR``) laid out like ``../shared/data``:
   ``<data-dir>/<data.local.folder>/<file>``;
2. the hub dataset named in the task (``data.hub``), through ``datasets.load_dataset``;
3. otherwise a clear error naming both.

Every source is parsed (``readers``) into the same records (``rows``) and written as
``<cache>/data/<task>/<fingerprint>/<split>.jsonl``, which the task's lm-eval YAML reads through
``${data_dir}``. A task with a train split but no validation split of its own gets one carved out of its
train split (``carve_validation``): never out of test, and the rows held out are not trained on. All checks (missing file, malformed row, label outside the label set, empty split) run
before any training starts; the files are written atomically, so nothing is ever half-written.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftbench.system.files import atomic_write, write_json
from peftbench.tasks.data_spec import SPLIT_ORDER, DataError, DataSpec, ValidationSpec
from peftbench.tasks.readers import READERS, count_file_rows
from peftbench.tasks.rows import hub_row, map_row, normalize

DATA_DIR_ENV = "PEFTBENCH_DATA_DIR"
Records = dict[str, list[dict[str, Any]]]  # split -> normalized records
VALIDATION_MAX = 500  # the default validation split: 10 % of the train rows, at most this many
CARVING = 1           # the carving rule's version: part of the fingerprint, so a new rule is a new cache entry


@dataclass
class PreparedData:
    """Normalized data of one task: where it lies, where it came from, how many rows per split."""

    folder: Path
    source: dict[str, Any]
    sizes: dict[str, int]


# ---- where the data is ---------------------------------------------------------------------------------
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
    """(available here, where from) — for ``peftbench tasks``. A split whose files hold no rows is not
    available: nothing can be trained or scored on it."""
    files = local_files(spec, root)
    if files is not None:
        missing = [str(p) for ps in files.values() for p in ps if not p.is_file()]
        empty = [s for s, n in (count_rows(spec, root) or {}).items() if n == 0] if not missing else []
        note = (f" (missing {', '.join(missing)})" if missing else
                f" (empty: {', '.join(empty)})" if empty else "")
        return (not missing and not empty, f"local {root / spec.local_folder}{note}")
    if spec.hub:
        return True, f"hub {spec.hub['path']}" + (f"/{spec.hub['name']}" if spec.hub.get("name") else "") + \
            " (needs hub access)"
    return False, "no data: pass --data-dir (or set $PEFTBENCH_DATA_DIR)"


def count_rows(spec: DataSpec, root: Path | None) -> dict[str, int] | None:
    """Rows per split of the local files (cheap: lines or list length), for ``peftbench tasks``."""
    files = local_files(spec, root)
    if files is None or any(not p.is_file() for ps in files.values() for p in ps):
        return None
    sizes = {}
    for split, paths in files.items():
        counts = [count_file_rows(p, f) for p, f in zip(paths, spec.local_splits[split], strict=True)]
        if None in counts:
            return None
        sizes[split] = sum(n for n in counts if n is not None)
    return sizes


# ---- preparing it into the cache ---------------------------------------------------------------------
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


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _prepare_local(task_name: str, spec: DataSpec, files: dict[str, list[Path]], cache_dir: Path,
                   need_train: bool) -> PreparedData:
    origin = f"local folder {spec.local_folder}"
    missing = [p for ps in files.values() for p in ps if not p.is_file()]
    if missing:
        raise DataError(f"task {task_name!r}: data file(s) not found: {', '.join(map(str, missing))}. The task "
                        f"expects them in the data folder under {spec.local_folder}/.")
    if need_train and "train" not in files:
        _check_splits(task_name, {s: 1 for s in files}, need_train, origin)
    digests = {str(p): file_sha256(p) for ps in files.values() for p in ps}
    # split -> file digests in the task's file order: swapping two files' contents changes the fingerprint
    fingerprint = _fingerprint(task_name, spec, [json.dumps({s: [digests[str(p)] for p in ps]
                                                             for s, ps in files.items()}, sort_keys=True),
                                                 *_carving(list(files), spec.validation)])
    hit = _cached(cache_dir / "data" / task_name / fingerprint, list(files))
    if hit is not None:
        _check_splits(task_name, hit.sizes, need_train, origin)
        return hit
    first = next(iter(files))  # the dataset folder: the first file's path less the task's relative file name
    dataset_dir = files[first][0].resolve().parents[len(Path(spec.local_splits[first][0].file).parts) - 1]
    source: dict[str, Any] = {"kind": "local", "folder": str(dataset_dir), "splits": {}}
    records = {split: _read_local_split(task_name, spec, split, paths) for split, paths in files.items()}
    for split, paths in files.items():
        source["splits"][split] = [{"file": f.file, "sha256": digests[str(p)]}
                                   for p, f in zip(paths, spec.local_splits[split], strict=True)]
    _check_splits(task_name, {s: len(r) for s, r in records.items()}, need_train, origin)
    return _finish(task_name, cache_dir, fingerprint, source, records, spec.validation)


def _read_local_split(task_name: str, spec: DataSpec, split: str, paths: list[Path]) -> list[dict[str, Any]]:
    """Every row of one split's files, normalized; a file without rows is an error."""
    rows: list[dict[str, Any]] = []
    for path, fspec in zip(paths, spec.local_splits[split], strict=True):
        n0 = len(rows)
        for lineno, row in READERS[fspec.format](path, fspec):
            if spec.local_map or spec.local_label_index:
                row = map_row(row, spec.local_map, spec.local_label_index, f"{path}:{lineno}")
            rows.append(normalize(row, spec, f"{path}:{lineno}"))
        if len(rows) == n0:
            raise DataError(f"task {task_name!r}: {path} has no rows (split {split!r}).")
    return rows


def _prepare_hub(task_name: str, spec: DataSpec, cache_dir: Path, need_train: bool) -> PreparedData:
    hub = spec.hub or {}
    origin = f"hub dataset {hub['path']}"
    _check_splits(task_name, {s: 1 for s in hub["splits"]}, need_train, origin)
    try:
        import datasets
    except ImportError:  # pragma: no cover - a dependency
        raise DataError("the 'datasets' package is needed to read hub datasets.") from None
    label_values = {str(k): str(v) for k, v in (hub.get("label_values") or {}).items()} or None
    if label_values and spec.label_values and list(label_values.values()) != spec.labels:
        raise DataError(f"task {task_name!r}: data.hub.label_values must map onto the same label words, in the same "
                        f"order, as data.label.values ({', '.join(spec.labels or [])}).")
    records: Records = {}
    source: dict[str, Any] = {"kind": "hub", "path": hub["path"], "name": hub.get("name"), "splits": {}}
    for split, hub_split in hub["splits"].items():
        try:
            ds = datasets.load_dataset(hub["path"], hub.get("name"), split=hub_split)
        except Exception as e:  # no network, unknown id, ...
            raise DataError(f"task {task_name!r}: the hub dataset {hub['path']!r} (split {hub_split!r}) could not be "
                            f"loaded ({type(e).__name__}: {str(e)[:200]}). Pass --data-dir (or set "
                            f"${DATA_DIR_ENV}) to a local data folder instead.") from None
        where = f"hub {hub['path']} {hub_split} row"
        records[split] = [normalize(hub_row(dict(row), hub, f"{where} {i}"), spec, f"{where} {i}", label_values)
                          for i, row in enumerate(ds, start=1)]
        source["splits"][split] = {"split": hub_split, "fingerprint": getattr(ds, "_fingerprint", None),
                                   "rows": len(records[split])}
    _check_splits(task_name, {s: len(r) for s, r in records.items()}, need_train, origin)
    fingerprint = _fingerprint(task_name, spec, [json.dumps(source, sort_keys=True, default=str),
                                                 *_carving(list(records), spec.validation)])
    return _finish(task_name, cache_dir, fingerprint, source, records, spec.validation)


def _check_splits(task_name: str, sizes: dict[str, int], need_train: bool, origin: str) -> None:
    if need_train and "train" not in sizes:
        raise DataError(f"task {task_name!r} has no train split ({origin}), but a method is asked to train on it. "
                        "Use it as an evaluation-only task with --retention, or add a train split.")
    for split, n in sizes.items():
        if n == 0:
            raise DataError(f"task {task_name!r}: split {split!r} is empty ({origin}).")


def prepare_generated(task_name: str, generated: Path, source: dict[str, Any], validation: ValidationSpec,
                      cache_dir: Path) -> PreparedData:
    """A generated task's data: the ``<split>.jsonl`` files its generator wrote into ``generated``, with the
    validation split carved out of train, in the cache (once per content fingerprint)."""
    paths = {s: generated / f"{s}.jsonl" for s in SPLIT_ORDER if (generated / f"{s}.jsonl").is_file()}
    fingerprint = _fingerprint(task_name, None, [json.dumps(source, sort_keys=True, default=str),
                                                 json.dumps({s: file_sha256(p) for s, p in paths.items()}),
                                                 *_carving(list(paths), validation)])
    hit = _cached(cache_dir / "data" / task_name / fingerprint, list(paths))
    if hit is not None:
        return hit
    records = {s: [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
               for s, p in paths.items()}
    return _finish(task_name, cache_dir, fingerprint, dict(source), records, validation)


# ---- the validation split ----------------------------------------------------------------------------
def validation_size(n_train: int, validation: ValidationSpec) -> int:
    """Rows held out for validation: the task's ``data.validation.size``, else 10 % of the train rows (rounded
    half up), at most 500; 0 (no validation split) for a train split under 5 rows."""
    if validation.size is not None:
        return validation.size
    return min(VALIDATION_MAX, (n_train + 5) // 10)


def carve_validation(task_name: str, records: Records, validation: ValidationSpec
                     ) -> tuple[Records, dict[str, Any] | None]:
    """``records`` with a validation split taken out of train, and its provenance (None: nothing carved —
    no train split, a validation split of the data's own, or a train split too small for the default).

    The distinct training rows are ordered by the sha256 of the seed and the row's content, and the first
    ``size`` become the validation split, in that order (so any ``--limit`` prefix is a random sample). The
    order depends on the rows alone, not the file's order. Every copy of a held-out row leaves train too, so
    no validation row is trained on; train keeps its order otherwise."""
    if "train" not in records or "validation" in records:
        return records, None
    train = records["train"]
    size = validation_size(len(train), validation)
    if size == 0:
        return records, None
    contents = [json.dumps(r, sort_keys=True, ensure_ascii=False) for r in train]
    first = dict(zip(reversed(contents), reversed(train), strict=True))  # content -> its first row
    if size >= len(first):
        raise DataError(f"task {task_name!r}: data.validation.size is {size}, but the train split has "
                        f"{len(first)} distinct rows: holding {size} out would leave nothing to train on.")
    order = sorted(first, key=lambda c: hashlib.sha256(f"{validation.seed}\n{c}".encode()).hexdigest())
    held = set(order[:size])
    rest = [r for r, c in zip(train, contents, strict=True) if c not in held]
    provenance = {"from": "train", "size": size, "seed": validation.seed, "train_rows_before": len(train),
                  "rows_left_for_train": len(rest)}
    return {**records, "train": rest, "validation": [first[c] for c in order[:size]]}, provenance


def _carving(splits: list[str], validation: ValidationSpec) -> list[str]:
    """The fingerprint's part for the carved validation split (nothing when none is carved: the data of an
    eval-only task, or of one with its own validation split, keeps its fingerprint)."""
    if "train" not in splits or "validation" in splits:
        return []
    return [json.dumps({"validation": {"size": validation.size, "seed": validation.seed, "carving": CARVING}})]


def _fingerprint(task_name: str, spec: DataSpec | None, sources: list[str]) -> str:
    parts = [] if spec is None else [spec.describe(), spec.label_field, spec.label_values, spec.choices_field,
                                     spec.contains, {s: [vars(f) for f in fs] for s, fs in spec.local_splits.items()}]
    h = hashlib.sha256(json.dumps([task_name, *parts, sources], sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _cached(folder: Path, splits: list[str]) -> PreparedData | None:
    """The folder's data, when ``.source.json`` and every split file (the source's and any carved) are there."""
    meta = folder / ".source.json"
    if not meta.is_file():
        return None
    info = json.loads(meta.read_text())
    if all((folder / f"{s}.jsonl").is_file() for s in {*splits, *info["sizes"]}):
        return PreparedData(folder=folder, source=info["source"], sizes=info["sizes"])
    return None


def _finish(task_name: str, cache_dir: Path, fingerprint: str, source: dict[str, Any],
            records: Records, validation: ValidationSpec) -> PreparedData:
    """Carve the validation split, write every split and, last, ``.source.json``, whose presence marks the
    folder complete."""
    records, carved = carve_validation(task_name, records, validation)
    if carved is not None:
        source = {**source, "validation": carved}
    folder = cache_dir / "data" / task_name / fingerprint
    folder.mkdir(parents=True, exist_ok=True)
    for split in sorted(records, key=_split_rank):
        _write_split(folder, split, records[split])
    sizes = {s: len(records[s]) for s in sorted(records, key=_split_rank)}
    write_json(folder / ".source.json", {"source": source, "sizes": sizes})
    return PreparedData(folder=folder, source=source, sizes=sizes)


def _split_rank(split: str) -> tuple[int, str]:
    return (SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER), split)


def _write_split(folder: Path, split: str, records: list[dict[str, Any]]) -> None:
    def write(fh: Any) -> None:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")

    atomic_write(folder / f"{split}.jsonl", write)
