"""Local model folders: check everything ``from_pretrained`` will need (a loadable config of a causal LM,
weights that are really there, a tokenizer) when the source is resolved, so a broken folder is a
:class:`UsageError` naming the folder and the file before any session starts, never a traceback later."""

from __future__ import annotations

import json
from pathlib import Path

from peftbench.errors import UsageError
from peftbench.models.resolved import VALID_FORMS, ModelInfo, ResolvedModel

# what AutoModelForCausalLM.from_pretrained looks for in a folder, in its order
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def resolve_folder(path: Path, source: str) -> ResolvedModel:
    """The model folder ``path`` (given as ``source``), checked: config, weights, tokenizer."""
    where = f"Model folder {source!r}"
    config = path / "config.json"
    if not config.is_file():
        hint = (" It holds adapter_config.json: that is an adapter; pass its base model instead (or load it with "
                "peftbench.load_artifact)." if (path / "adapter_config.json").is_file() else "")
        raise UsageError(f"{where} has no config.json, so it is not a transformers model folder.{hint} A model "
                         f"source is {VALID_FORMS}.")
    try:
        values = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"{where}: {config} is not valid JSON ({e}). Fix or replace the file (save_pretrained "
                         "writes it).") from None
    if not isinstance(values, dict):
        raise UsageError(f"{where}: {config} holds a JSON {type(values).__name__}, not an object of settings.")
    _check_config(path, where, config)
    _check_weights(path, where)
    _check_tokenizer(path, where)
    architectures = values.get("architectures") or ["unknown"]
    info = ModelInfo(source, "local", str(path.resolve()), str(architectures[0]), None, None, "")
    return ResolvedModel(info, str(path), local_only=True)


def _check_config(path: Path, where: str, config: Path) -> None:
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        loaded = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # transformers raises ValueError, KeyError, OSError, ... for a config it cannot use
        raise UsageError(f"{where}: transformers cannot read {config}: {_first_line(e)}. It needs a "
                         "'model_type' transformers knows (e.g. \"llama\") and that model's settings.") from None
    if loaded.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UsageError(f"{where}: {config} describes a {loaded.model_type!r} model, which has no causal "
                         "language-model head in transformers (AutoModelForCausalLM); peftbench needs one.")


def _check_weights(path: Path, where: str) -> None:
    present = [name for name in WEIGHT_FILES if (path / name).is_file()]
    if not present:
        raise UsageError(f"{where} has no weights: none of {', '.join(WEIGHT_FILES)} is there.")
    name = present[0]
    if name.endswith(".index.json"):
        try:
            shards = sorted(set(json.loads((path / name).read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UsageError(f"{where}: {path / name} is not a weight index (a JSON object with a 'weight_map'): "
                             f"{_first_line(e)}.") from None
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise UsageError(f"{where}: {name} lists weight files that are not there: {', '.join(missing)}.")
        files = [path / s for s in shards]
    else:
        files = [path / name]
    for file in files:
        if file.suffix == ".safetensors":
            _check_safetensors(file, where)


def _check_safetensors(file: Path, where: str) -> None:
    """Read the file's header (cheap): a truncated or foreign file fails here, not in the first cell."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="np") as f:
            f.keys()
    except Exception as e:  # safetensors raises its own SafetensorError
        raise UsageError(f"{where}: {file} is not a readable safetensors file ({_first_line(e)}); it may be "
                         "truncated or not a weight file.") from None


def _check_tokenizer(path: Path, where: str) -> None:
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # missing files, a broken tokenizer.json, a tokenizer class needing a missing package
        raise UsageError(f"{where}: its tokenizer cannot be loaded ({_first_line(e)}). A model folder needs "
                         "the tokenizer's files too (tokenizer.json and tokenizer_config.json, as "
                         "tokenizer.save_pretrained writes them).") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
