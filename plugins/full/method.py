"""Full fine-tuning: all weights train. Nothing to merge or switch off; the artifact is the full model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from peftbench import Capabilities, ConfigError, Method


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
    description = "full fine-tuning: every parameter trains; artifact = the whole model (safetensors)"

    def prepare(self, model, config: FullConfig):
        for p in model.parameters():
            p.requires_grad_(True)
        if not config.train_embeddings:
            model.get_input_embeddings().weight.requires_grad_(False)
        return model

    def save(self, model, directory: Path, config: FullConfig) -> list[Path]:
        from safetensors.torch import save_model

        path = Path(directory) / "model.safetensors"
        save_model(model, str(path))  # handles tied weights (stored once)
        return [path]

    def load(self, directory: Path, base_model, config: FullConfig):
        from safetensors.torch import load_model

        load_model(base_model, str(Path(directory) / "model.safetensors"), strict=True)  # raises on a mismatch
        return base_model
