"""A task's tokenized training split, kept on disk so that it is built once, not once per process.

Formatting tens of thousands of rows through the lm-eval template and tokenizing them took 26-28 s per
``--jobs`` worker on the H200 host (SST-2's 60,113 rows, results/speed-gpu) and more on a 2-core CPU; every
worker, every resumed session and every re-run of the same command did it again. The file is named by what
the tokens depend on: the task's lm-eval YAML as materialized for this session (its template, and its data
files' content-fingerprinted folder), the included YAML it builds on, the tokenizer (its full serialized
form), the maximum length and this module's format version. Anything else changes the name, so a stale file
is never read; a damaged one is ignored and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

FORMAT = 1  # bump when TrainData or tokenize_pairs changes what a cached file means


def cached_train_split(build: Callable[[], Any], lm_eval_name: str, include_path: Path, tokenizer: Any,
                       max_length: int, cache_dir: Path) -> Any:
    """``build()``'s TrainData, read from ``cache_dir/tokens`` when an identical build was saved there."""
    key = _key(lm_eval_name, include_path, tokenizer, max_length)
    path = cache_dir / "tokens" / f"{lm_eval_name}-{key}.pt"
    data = _read(path)
    if data is None:
        data = build()
        _write(path, data)
    return data


def _key(lm_eval_name: str, include_path: Path, tokenizer: Any, max_length: int) -> str:
    h = hashlib.sha256(json.dumps({"format": FORMAT, "max_length": max_length}).encode())
    own = include_path / f"{lm_eval_name}.yaml"
    included = include_path / "_included" / lm_eval_name
    for f in [own, *sorted(p for p in included.rglob("*") if p.is_file())] if included.is_dir() else [own]:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    h.update(_tokenizer_fingerprint(tokenizer).encode())
    return h.hexdigest()[:20]


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    """A fast tokenizer's whole serialized form (vocabulary, merges, normalizer, added tokens); else what a
    slow one exposes of itself."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return hashlib.sha256(backend.to_str().encode()).hexdigest()
    vocab = tokenizer.get_vocab()
    return hashlib.sha256(json.dumps([type(tokenizer).__name__, sorted(vocab.items()),
                                      tokenizer.pad_token_id, tokenizer.eos_token_id]).encode()).hexdigest()


def _read(path: Path) -> Any:
    import torch

    from peftbench.train.batching import TrainData

    try:
        saved = torch.load(path, weights_only=True)
        lengths = saved["lengths"].tolist()
        ids = [chunk.tolist() for chunk in saved["ids"].split(lengths)]
        return TrainData(ids, saved["answer_start"].tolist(), int(saved["pad_id"]))
    except FileNotFoundError:
        return None
    except Exception:  # damaged or from another torch: rebuilt (and rewritten) by the caller
        return None


def _write(path: Path, data: Any) -> None:
    """Saved atomically (a temporary file renamed into place): a worker never reads half a file. A cache
    that cannot be written (read-only, full disk) costs only the rebuild next time."""
    import torch

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        saved = {"ids": torch.tensor([t for row in data.input_ids for t in row], dtype=torch.int32),
                 "lengths": torch.tensor([len(row) for row in data.input_ids], dtype=torch.int64),
                 "answer_start": torch.tensor(data.answer_start, dtype=torch.int64),
                 "pad_id": torch.tensor(data.pad_id)}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        torch.save(saved, tmp)
        os.replace(tmp, path)
    except OSError:
        with_tmp = locals().get("tmp")
        if with_tmp:
            Path(with_tmp).unlink(missing_ok=True)
