"""Find and load the base model: a hub id, a local folder, a ``.gguf`` file, ``tiny:llama`` or ``shape:<arch>``.

:func:`resolve_model` is cheap and does every check up front (a bad source is a :class:`UsageError`
before any training); it may download or convert once into the cache. :meth:`ResolvedModel.load` then
gives a fresh, identical base model on every call.

torch and transformers are imported inside functions, so ``peftbench methods`` stays fast.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from peftbench.errors import UsageError
from peftbench.models.folder import resolve_folder
from peftbench.models.gguf import resolve_gguf
from peftbench.models.hub import resolve_hub
from peftbench.models.resolved import VALID_FORMS, ModelInfo, Progress, ResolvedModel
from peftbench.models.shape import shape_config, shape_presets
from peftbench.models.tiny import TINY_PRESETS

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def default_cache_dir() -> Path:
    """``$PEFTBENCH_CACHE`` or ``~/.cache/peftbench``."""
    return Path(os.environ.get("PEFTBENCH_CACHE") or "~/.cache/peftbench").expanduser()


def load_model(source: str, device: Any = "cpu", dtype: Any = None, cache_dir: Path | None = None,
               progress: Progress | None = None) -> tuple[Any, Any, ModelInfo]:
    """Resolve ``source`` and load it: ``(model, tokenizer, info)``."""
    resolved = resolve_model(source, cache_dir=cache_dir, progress=progress)
    model, tokenizer = resolved.load(device, dtype)
    return model, tokenizer, resolved.info


def resolve_model(source: str, cache_dir: Path | None = None, progress: Progress | None = None) -> ResolvedModel:
    """Check ``source`` and find its files (downloading or converting once into ``cache_dir``)."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    say = progress or (lambda _msg: None)
    text = str(source).strip()
    if text.lower().startswith("shape:"):
        return _resolve_shape(text)
    if text.lower().startswith("tiny:"):
        return _resolve_tiny(text)
    path = Path(text).expanduser()
    if text.lower().endswith(".gguf"):
        return resolve_gguf(path, text, "gguf", "", cache, say)
    if path.is_dir():
        return resolve_folder(path, text)
    if path.exists():
        raise UsageError(f"Model source {text!r} is a file but not a .gguf file. A model source is {VALID_FORMS}.")
    if _HUB_ID.fullmatch(text):
        return resolve_hub(text, cache, say)
    if text.startswith(("/", ".", "~")) or os.sep in text or "/" in text:
        raise UsageError(f"Model path {text!r} does not exist. A model source is {VALID_FORMS}.")
    raise UsageError(f"Model source {text!r} is not a model this tool can load (no such path, and not an "
                     f"org/name hub id). A model source is {VALID_FORMS}.")


def _resolve_shape(text: str) -> ResolvedModel:
    if text.lower() not in shape_presets():
        raise UsageError(f"Unknown model shape {text!r}. Valid shapes: {', '.join(shape_presets())}. A model "
                         f"source is {VALID_FORMS}.")
    config = shape_config(text.lower().removeprefix("shape:"))
    info = ModelInfo(text, "shape", text.lower(), str(config["architectures"][0]), None, None,
                     f"random init from {config['_source']}: for cost at real scale, no accuracy")
    return ResolvedModel(info, "")


def _resolve_tiny(text: str) -> ResolvedModel:
    if text.lower() not in TINY_PRESETS:
        raise UsageError(f"Unknown tiny model preset {text!r}. Valid presets: {', '.join(TINY_PRESETS)}. "
                         f"A model source is {VALID_FORMS}.")
    info = ModelInfo(text, "tiny", text.lower(), "LlamaForCausalLM", None, None,
                     "random init (tests only: no accuracy)")
    return ResolvedModel(info, "")

