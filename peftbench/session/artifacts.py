"""Artifacts users can load: what produced each saved artifact (``peftbench_artifact.json``, written beside the
method's files in the cell's save phase) and :func:`load_artifact`, which puts any method's artifact back
onto its base model.

torch, transformers and the plugins are imported inside functions: ``import peftbench`` stays light.
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from peftbench.api.options import to_jsonable
from peftbench.errors import UsageError

MANIFEST = "peftbench_artifact.json"
FORMAT = "peftbench-artifact"
HOW_TO_LOAD = ("peftbench.load_artifact(folder) -> (model, tokenizer); `peftbench export FOLDER --to DIR` writes "
               "a folder transformers/PEFT load alone (see docs/methods.md)")


def write_manifest(directory: Path, spec: Any, method_config: Any, base_model: str) -> Path:
    """``directory/peftbench_artifact.json``: the method (and variant) and its config, the base model, the
    cell. Not one of the method's files: the artifact's size in the run file is the method's files alone."""
    data = {"format": FORMAT, "format_version": 1, "method": spec.method.split("@", 1)[0], "variant": spec.method,
            "method_config": to_jsonable(method_config), "base_model": portable_source(base_model),
            "base_model_given": base_model, "cell": spec.key, "peftbench_version": _version(),
            "how_to_load": HOW_TO_LOAD}
    path = Path(directory) / MANIFEST
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def portable_source(source: str) -> str:
    """A model source that still names the same model from another directory: an existing relative path
    made absolute; hub ids, ``tiny:`` and ``shape:`` as they are."""
    text = str(source).strip()
    if text.lower().startswith(("tiny:", "shape:")):
        return text
    path = Path(text).expanduser()
    return str(path.resolve()) if path.exists() else text


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest, or ``None`` when it has none (an artifact written before manifests)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise UsageError(f"{path} is not valid JSON ({e}); it records which method and base model made the "
                         "artifact.") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("method"), str):
        raise UsageError(f"{path} is not a peftbench artifact manifest (format {FORMAT!r} with a 'method').")
    return data


def describe(folder: Path, base: str | None = None) -> dict[str, Any]:
    """What the artifact in ``folder`` is: its manifest, or one inferred from its files (then ``base`` is
    needed); ``base``, when given, replaces the recorded base model."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"artifact folder {str(folder)!r} does not exist or is not a folder. Artifacts are kept "
                         "with `peftbench run --keep-artifacts`, under OUTPUT/artifacts/<cell>/.")
    data = read_manifest(folder)
    if data is None:
        method = _infer_method(folder)
        if base is None:
            raise UsageError(f"{folder} holds a {method} artifact without {MANIFEST} (written before peftbench "
                             "recorded its base model): pass the base model it was trained from (base=... or "
                             "--base MODEL).")
        data = {"format": FORMAT, "method": method, "variant": method, "method_config": {}, "base_model": base}
    return {**data, "base_model": base or data.get("base_model")}


def _infer_method(folder: Path) -> str:
    """The method of an artifact without a manifest, from the files its save() wrote."""
    peft_config = folder / "adapter_config.json"
    if (folder / "bottleneck_adapter_config.json").is_file():
        return "adapter"
    if peft_config.is_file():
        try:
            values = json.loads(peft_config.read_text(encoding="utf-8"))
        except ValueError:
            values = {}
        if isinstance(values, dict) and values.get("method") == "adapter":
            return "adapter"   # the bottleneck adapter's files of earlier versions
        if isinstance(values, dict) and str(values.get("peft_type", "")).upper() == "LORA":
            return "lora"
    if (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file():
        return "full"
    raise UsageError(f"{folder} holds no artifact peftbench recognizes: no {MANIFEST}, and neither a PEFT LoRA "
                     "folder, a bottleneck adapter nor a full model's weights.")


def method_of(data: dict[str, Any], host: Any = None) -> tuple[Any, Any]:
    """The Method object and its config for a manifest (plugins from ``host``, else those installed)."""
    from peftbench.api.plugins import make_plugin_manager
    from peftbench.api.registry import collect_methods

    registry = collect_methods(host or make_plugin_manager())
    try:
        method = registry.get(data["method"])
    except UsageError as e:
        raise UsageError(f"the artifact was made by method {data['method']!r}, which no loaded plugin provides "
                         f"(install the plugin that provides it): {e}") from None
    return method, method.make_config(data.get("method_config") or {})


def load_artifact(folder: str | Path, base: str | None = None, device: str = "cpu", host: Any = None
                  ) -> tuple[Any, Any]:
    """Load the artifact in ``folder`` (any method's, as ``peftbench run --keep-artifacts`` kept it) onto its
    base model: ``(model, tokenizer)``, the model in eval mode on ``device`` as the method's ``load`` returns it
    (a ``PeftModel`` for LoRA/QLoRA, the adapted transformers model for bottleneck adapters, the fine-tuned
    model for full fine-tuning), the tokenizer the base model's. ``base`` overrides the base model recorded in
    the artifact's ``peftbench_artifact.json`` (any ``--model`` source: hub id, folder, .gguf, tiny:llama)."""
    from peftbench.models.sources import resolve_model
    from peftbench.session.plan import resolve_device

    data = describe(Path(folder), base)
    method, config = method_of(data, host)
    device = resolve_device(device)
    available = method.availability(device)
    if not available:
        raise UsageError(f"method {data['method']!r} cannot run here: {available.reason}.")
    base_model, tokenizer = resolve_model(data["base_model"]).load(device)
    model = method.load(Path(folder), base_model, config)
    return model.eval(), tokenizer


def _version() -> str:
    try:
        return version("peftbench")
    except PackageNotFoundError:
        return "unknown"
