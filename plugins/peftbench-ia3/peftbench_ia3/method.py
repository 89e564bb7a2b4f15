"""IA3 (Liu et al., 2022): learned vectors that rescale keys, values and feed-forward activations; on peft."""

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from peftbench import Capabilities, ConfigError, Method


@dataclass
class IA3Config:
    target_modules: list[str] = field(default_factory=lambda: ["k_proj", "v_proj", "down_proj"],
                                      metadata={"help": "modules whose output (or input, if feed-forward) is scaled"})
    feedforward_modules: list[str] = field(default_factory=lambda: ["down_proj"],
                                           metadata={"help": "the subset of target_modules scaled on their input"})

    def __post_init__(self):
        extra = sorted(set(self.feedforward_modules) - set(self.target_modules))
        if extra:
            raise ConfigError(f"ia3 option 'feedforward_modules' {extra} must also be in target_modules "
                              f"{self.target_modules}.")


class IA3Method(Method):
    name = "ia3"
    Config = IA3Config
    capabilities = Capabilities(mergeable=True, can_disable=True)
    requires = ("peft",)
    default_lr = 3e-3
    description = "IA3 (peft): learned scaling vectors on keys, values and feed-forward inputs; mergeable"

    def prepare(self, model, config):
        import peft

        cfg = peft.IA3Config(task_type="CAUSAL_LM", target_modules=list(config.target_modules),
                             feedforward_modules=list(config.feedforward_modules))
        try:
            return peft.get_peft_model(model, cfg)
        except ValueError as e:
            raise ConfigError(f"ia3: {e}") from None

    def merge(self, model):
        model.merge_adapter()
        return model

    def unmerge(self, model):
        model.unmerge_adapter()
        return model

    def unload(self, model):
        return model.unload()  # the merged layers without their IA3 wrappers

    @contextlib.contextmanager
    def disabled(self, model):
        with model.disable_adapter():
            yield model

    def save(self, model, directory, config):
        model.save_pretrained(str(directory))
        return sorted(p for p in Path(directory).rglob("*") if p.is_file())

    def load(self, directory, base_model, config):
        import peft

        return peft.PeftModel.from_pretrained(base_model, str(directory))
