"""LoRA: low-rank updates W + (alpha/r) B A on the frozen base's linear layers, through ``peft``."""

from __future__ import annotations

import contextlib
from pathlib import Path

from peftbench import Capabilities, ConfigError, Method

from .config import LoraConfig


def _linear_names(model) -> list[str]:
    import torch

    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})


class LoraMethod(Method):
    name = "lora"
    Config = LoraConfig
    capabilities = Capabilities(mergeable=True, can_disable=True, can_stack=True)
    requires = ("peft",)
    default_lr = 2e-4
    description = "LoRA (peft): trainable low-rank updates on frozen linear layers; mergeable"

    def prepare(self, model, config: LoraConfig):
        import peft

        try:
            return peft.get_peft_model(model, config.to_peft())
        except ValueError as e:
            if "Target modules" in str(e) or "target_modules" in str(e):
                raise ConfigError(f"lora option 'target_modules' {config.target_modules} matches no module of "
                                  f"this model; its linear layers are named: {', '.join(_linear_names(model))}.") from None
            raise

    def merge(self, model):
        model.merge_adapter()
        return model

    def unmerge(self, model):
        model.unmerge_adapter()
        return model

    def unload(self, model):
        return model.unload()  # the merged base layers without their LoRA wrappers (merge_and_unload's end)

    @contextlib.contextmanager
    def disabled(self, model):
        with model.disable_adapter():
            yield model

    @contextlib.contextmanager
    def stacked(self, model, n: int):
        """``n`` LoRA adapters active at once (peft sums their deltas): ``n - 1`` copies of the default
        adapter's config, cast to its weights' dtype. peft creates new adapters in training mode and
        ``set_adapter`` makes the active ones trainable: both are put back as they were."""
        import copy

        names = [f"peftbench_stack{i}" for i in range(1, n)]
        active = list(model.active_adapters)
        dtype = next(p.dtype for k, p in model.named_parameters() if "lora_A" in k)
        modes = {m: m.training for m in model.modules()}
        grads = {k: p.requires_grad for k, p in model.named_parameters()}
        try:
            for name in names:
                model.add_adapter(name, copy.deepcopy(model.peft_config[active[0]]))
            for k, p in model.named_parameters():
                if any(f".{name}." in k for name in names):
                    p.data = p.data.to(dtype)
            model.base_model.set_adapter(active + names)
            for m in model.modules():  # the new adapters' dropout follows the model (eval: off)
                m.training = modes.get(m, modes[model])
            yield model
        finally:
            model.base_model.set_adapter(active if len(active) > 1 else active[0])
            for name in names:
                if name in model.peft_config:
                    model.delete_adapter(name)
            for k, p in model.named_parameters():
                if k in grads:
                    p.requires_grad_(grads[k])
            for m, flag in modes.items():
                m.training = flag

    def save(self, model, directory: Path, config: LoraConfig) -> list[Path]:
        model.save_pretrained(str(directory))
        return sorted(p for p in Path(directory).rglob("*") if p.is_file())

    def load(self, directory: Path, base_model, config: LoraConfig):
        import peft

        return peft.PeftModel.from_pretrained(base_model, str(directory))
