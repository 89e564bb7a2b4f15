"""Full fine-tuning: all weights train. Nothing to merge or switch off; the artifact is the full model, as a
``from_pretrained`` folder (config and weights; the tokenizer is the base model's)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from peftbench import Capabilities, ConfigError, Method, UsageError


@dataclass
class FullConfig:
    train_embeddings: bool = field(default=True, metadata={
        "help": "also train the input embeddings (and a tied LM head); false freezes them"})

    def __post_init__(self) -> None:
        if not isinstance(self.train_embeddings, bool):
            raise ConfigError(f"option 'train_embeddings' must be true or false, got {self.train_embeddings!r}.")


class FullMethod(Method):
    name = "full"
    Config = FullConfig
    capabilities = Capabilities(mergeable=False, can_disable=False, trains_all_parameters=True)
    default_lr = 5e-5
    description = "full fine-tuning: every parameter trains; artifact = the whole model (a from_pretrained folder)"

    def prepare(self, model, config: FullConfig):
        for p in model.parameters():
            p.requires_grad_(True)
        if not config.train_embeddings:
            model.get_input_embeddings().weight.requires_grad_(False)
        return model

    def save(self, model, directory: Path, config: FullConfig) -> list[Path]:
        """A ``from_pretrained`` folder: ``config.json``, ``generation_config.json`` (where the model has one)
        and the weights (``model.safetensors``, or shards and their index for a large model; tied weights
        stored once). The tokenizer is the base model's: ``peftbench.load_artifact`` and ``peftbench export``
        supply it."""
        model.save_pretrained(str(directory), safe_serialization=True)
        return sorted(p for p in Path(directory).rglob("*") if p.is_file())

    def load(self, directory: Path, base_model, config: FullConfig):
        """The saved weights onto ``base_model``: from a ``save`` folder, or from one of earlier versions
        (``model.safetensors`` alone); every weight must be there and fit (tied ones are stored once)."""
        import torch
        from safetensors import safe_open

        directory = Path(directory)
        files = weight_files(directory)
        shapes = {}
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                shapes.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
        own = base_model.state_dict()
        shared = _sharing(base_model)
        missing = sorted(k for k in own if not any(n in shapes for n in shared.get(k, (k,))))
        unexpected = sorted(k for k in shapes if k not in own)
        if (missing or unexpected) and (directory / "config.json").is_file():
            return _load_converted(directory, base_model)  # saved under the checkpoint's own names
        bad = [f"{k}: saved {shapes[k]}, model {tuple(own[k].shape)}"
               for k in shapes if k in own and shapes[k] != tuple(own[k].shape)]
        if missing or unexpected or bad:
            raise UsageError(f"full load: the weights in {directory} do not fit this model: missing "
                             f"{missing[:5] or 'none'}, unexpected {unexpected[:5] or 'none'}, shapes differ "
                             f"{bad[:5] or 'none'}. Load the artifact onto the base model it was trained from.")
        with torch.no_grad():
            for file in files:  # one file at a time: at most one shard in host memory
                with safe_open(str(file), framework="pt") as f:
                    for k in f.keys():
                        own[k].copy_(f.get_tensor(k).to(device=own[k].device, dtype=own[k].dtype))
        return base_model


def _load_converted(directory: Path, base_model):
    """``from_pretrained`` the folder (which maps a checkpoint's names onto the model's), then its weights
    into ``base_model``."""
    import torch
    from transformers import AutoModelForCausalLM

    own = base_model.state_dict()
    loaded = AutoModelForCausalLM.from_pretrained(str(directory), dtype=next(iter(own.values())).dtype)
    theirs = loaded.state_dict()
    if set(theirs) != set(own):
        raise UsageError(f"full load: the model in {directory} is not of the base model's architecture "
                         f"({type(loaded).__name__} vs {type(base_model).__name__}).")
    with torch.no_grad():
        for k, t in theirs.items():
            own[k].copy_(t.to(device=own[k].device, dtype=own[k].dtype))
    return base_model


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a full fine-tuning artifact: the index's shards, or ``model.safetensors``."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [directory / s for s in shards]
    single = directory / "model.safetensors"
    if not single.is_file():
        raise UsageError(f"full load: {directory} holds neither model.safetensors nor model.safetensors.index.json "
                         "(what full fine-tuning's save writes).")
    return [single]


def _sharing(model) -> dict[str, tuple[str, ...]]:
    """Each state-dict name -> every name sharing its storage (a tied LM head and the input embeddings):
    ``save_pretrained`` stores such a group once, under one of its names."""
    groups: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        groups.setdefault(tensor.data_ptr(), []).append(name)
    return {name: tuple(names) for names in groups.values() for name in names}
