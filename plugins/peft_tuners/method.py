"""One peftbench Method class per PEFT tuner, made from its catalog entry: options from PEFT's config
dataclass, capabilities as the survey measured them, PEFT's own artifact folder."""

from __future__ import annotations

import contextlib
import functools
import importlib
from pathlib import Path
from typing import Any, ClassVar

from peftbench import Availability, Capabilities, ConfigError, Method, NotSupported

from .catalog import entry
from .config import make_config_class, peft_kwargs
from .fitting import apply_fits
from .tuners import TUNERS

PREFIX = "peft-"    # registered name: peft-vera (a file name on every system)
ALIAS = "peft:"     # accepted as well: peft:vera


def method_name(key: str) -> str:
    return PREFIX + key


class PeftTunerMethod(Method):
    """The behaviour every tuner shares; ``tuner_class`` fills in the catalog's facts."""

    key: ClassVar[str]
    tuner: ClassVar[dict[str, Any]]
    requires = ("peft",)

    def availability(self, device: str) -> Availability:
        if not self.tuner["offered"]:
            return Availability(False, self.tuner["reason"])
        return super().availability(device)

    def peft_config(self, config: Any, model: Any) -> Any:
        """PEFT's config object for ``config``, with the model-dependent defaults fitted to ``model``."""
        module, _, name = self.tuner["config_class"].partition(":")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            import peft

            raise ConfigError(f"{self.name}: the installed peft {peft.__version__} has no {name} (peftbench's "
                              f"catalog was measured with peft {self.tuner['peft_version']}).") from None
        values = apply_fits(self.key, peft_kwargs(config, self.tuner["options"]), model)
        try:
            return cls(task_type="CAUSAL_LM", **values)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{self.name}: PEFT refuses these options: {e}") from None

    def prepare(self, model, config):
        import peft

        cfg = self.peft_config(config, model)
        try:
            return self._in_place(peft.get_peft_model(model, cfg))
        except (ValueError, TypeError, NotImplementedError) as e:
            raise ConfigError(f"{self.name} does not fit this model with these options: {e}") from None

    def _in_place(self, peft_model: Any) -> Any:
        """A virtual-token tuner's PeftModel as a model whose logits are the task tokens' (virtual.py)."""
        if not self.capabilities.virtual_tokens:
            return peft_model
        from .virtual import VirtualTokenModel

        return VirtualTokenModel(peft_model)

    def inference_model(self, model):
        # without the PeftModel a virtual-token tuner's tokens would not be in place
        return model if self.capabilities.virtual_tokens else super().inference_model(model)

    def merge(self, model):
        if not self.capabilities.mergeable:
            return super().merge(model)
        model.merge_adapter()
        return model

    def unmerge(self, model):
        if not self.capabilities.mergeable:
            return super().unmerge(model)
        model.unmerge_adapter()
        return model

    def unload(self, model):
        return model.unload() if self.capabilities.mergeable else model

    @contextlib.contextmanager
    def disabled(self, model):
        if not self.capabilities.can_disable:
            raise NotSupported(f"method {self.name!r} cannot disable its weights (PEFT's disable_adapter does "
                               "not give the base model's outputs)")
        with model.disable_adapter():
            yield model

    def save(self, model, directory: Path, config) -> list[Path]:
        model.save_pretrained(str(directory))
        return sorted(p for p in Path(directory).rglob("*") if p.is_file())

    def load(self, directory: Path, base_model, config):
        import peft

        return self._in_place(peft.PeftModel.from_pretrained(base_model, str(directory)))


@functools.cache
def tuner_class(key: str) -> type[PeftTunerMethod]:
    """The Method class of tuner ``key`` (``vera``), named ``peft-vera``, from the catalog."""
    return build_class(key, entry(key))


def build_class(key: str, facts: dict[str, Any]) -> type[PeftTunerMethod]:
    """A Method class from a catalog entry (the survey builds one from what it has measured so far)."""
    spec = TUNERS[key]
    caps = facts["capabilities"]
    what = "virtual tokens" if facts["prompt_style"] else "PEFT tuner"
    merge = "mergeable" if caps["mergeable"] else "not mergeable"
    attrs = {
        "name": method_name(key), "key": key, "tuner": facts,
        "Config": make_config_class(key, facts["options"]),
        "capabilities": Capabilities(mergeable=caps["mergeable"], can_disable=caps["can_disable"],
                                     virtual_tokens=facts["prompt_style"]),
        "default_lr": spec.lr, "default_grid": dict(spec.grid),
        "description": f"{facts['peft_type']} ({what}, peft {facts['peft_version']}): {merge}",
        "__module__": "peftbench_plugins.peft_tuners.classes",
    }
    return type(f"Peft_{key}", (PeftTunerMethod,), attrs)
