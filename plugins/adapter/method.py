"""Bottleneck adapters: small down/up MLPs added in series after (Houlsby, Pfeiffer) or in parallel to
(parallel) the frozen base's blocks. Our own module: PEFT has no bottleneck adapter."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

from peftbench import Capabilities, ConfigError, Method, UsageError

from .config import AdapterConfig

# Not PEFT's names (adapter_model.safetensors / adapter_config.json): PEFT would take the folder for one of its
# own adapters and fail on it (KeyError 'peft_type'). Folders written before keep loading (OLD_FILES).
WEIGHTS = "bottleneck_adapter.safetensors"
CONFIG = "bottleneck_adapter_config.json"
OLD_FILES = ("adapter_config.json", "adapter_model.safetensors")
FORMAT = "peftbench-bottleneck-adapter"
META_KEYS = ("method", "peftbench_method", "format", "format_version", "note", "weights")
NOTE = ("A peftbench bottleneck adapter (peftbench_plugins.adapter), not a PEFT adapter: PEFT and transformers "
        "cannot load it. Load it onto its base model with peftbench.load_artifact(folder) (or "
        "AdapterMethod().load(folder, base_model, None)); the placement and sizes are the fields below, the "
        "tensors are named as in the adapted model's named_parameters().")


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _linear_names(model) -> list[str]:
    import torch

    return sorted({_leaf(n) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})


def _wrappers(model) -> list[tuple[str, object]]:
    from .layers import WRAPPERS

    return [(n, m) for n, m in model.named_modules() if isinstance(m, WRAPPERS)]


def _hidden_size(model) -> int:
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    size = getattr(cfg, "hidden_size", None)
    if not isinstance(size, int) or size < 1:
        raise ConfigError("adapter placement 'parallel' needs model.config.hidden_size, which this model "
                          "lacks; use placement houlsby or pfeiffer.")
    return size


def adapter_state(model) -> dict:
    """The adapter parameters of ``model`` by their names in ``model.named_parameters()``."""
    return {f"{name}.adapter.{pn}": p for name, w in _wrappers(model) for pn, p in w.adapter.named_parameters()}


class AdapterMethod(Method):
    name = "adapter"
    Config = AdapterConfig
    capabilities = Capabilities(mergeable=False, can_disable=True, can_stack=True)
    default_lr = 1e-3
    description = "bottleneck adapters (Houlsby/Pfeiffer series or parallel) on the frozen base; not mergeable"

    def prepare(self, model, config: AdapterConfig):
        from .layers import Bottleneck, ParallelAdapterWrapper, SeriesAdapterWrapper, param_dtype_device

        if _wrappers(model):
            raise UsageError("this model already has bottleneck adapters (prepare was called twice); "
                             "load a fresh base model.")
        fields = {"houlsby": ("attn_output_modules", "mlp_output_modules"),
                  "pfeiffer": ("mlp_output_modules",), "parallel": ("mlp_modules",)}[config.placement]
        modules = list(model.named_modules())
        targets: list[tuple[str, object]] = []
        for field in fields:
            wanted = set(getattr(config, field))
            found = [(n, m) for n, m in modules if n and _leaf(n) in wanted]
            if not found:
                raise ConfigError(
                    f"adapter option {field!r} {getattr(config, field)} matches no module of this model "
                    f"(placement {config.placement!r}); its Linear layers are named: "
                    f"{', '.join(_linear_names(model))}.")
            targets += [(n, m) for n, m in found if n not in {t for t, _ in targets}]

        parallel = config.placement == "parallel"
        sized = []  # check every target before changing the model
        for path, module in targets:
            hidden = _hidden_size(model) if parallel else getattr(module, "out_features", None)
            if not isinstance(hidden, int):
                raise ConfigError(f"adapter: module {path!r} ({type(module).__name__}) is not a Linear layer "
                                  f"(no out_features); name Linear layers, e.g. one of: "
                                  f"{', '.join(_linear_names(model))}.")
            sized.append((path, module, hidden))

        for p in model.parameters():
            p.requires_grad_(False)
        wrapper_cls = ParallelAdapterWrapper if parallel else SeriesAdapterWrapper
        for path, module, hidden in sized:
            dtype, device = param_dtype_device(module)
            adapter = Bottleneck(hidden, max(1, hidden // config.reduction_factor), config.non_linearity,
                                 config.dropout, dtype=dtype, device=device)
            parent_name, _, child = path.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, wrapper_cls(module, adapter, config.scaling))
        return model

    @contextlib.contextmanager
    def disabled(self, model):
        wrappers = [w for _, w in _wrappers(model)]
        before = [w.adapter_enabled for w in wrappers]
        try:
            for w in wrappers:
                w.adapter_enabled = False
            yield model
        finally:
            for w, flag in zip(wrappers, before, strict=True):
                w.adapter_enabled = flag

    @contextlib.contextmanager
    def stacked(self, model, n: int):
        """``n`` bottlenecks per placement: series ones applied one after another, parallel ones summed."""
        import copy

        wrappers = [w for _, w in _wrappers(model)]
        try:
            for w in wrappers:
                w.extra.extend(copy.deepcopy(w.adapter) for _ in range(n - 1))
            yield model
        finally:
            for w in wrappers:
                del w.extra[:]

    def save(self, model, directory: Path, config: AdapterConfig) -> list[Path]:
        from safetensors.torch import save_file

        state = adapter_state(model)
        if not state:
            raise UsageError("adapter save: the model has no bottleneck adapters (was it prepared?).")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights, cfg = directory / WEIGHTS, directory / CONFIG
        save_file({n: p.detach().cpu().contiguous() for n, p in state.items()}, str(weights),
                  metadata={"format": "pt"})
        meta = {"peftbench_method": self.name, "format": FORMAT, "format_version": 1, "note": NOTE,
                "weights": WEIGHTS, "method": self.name, **dataclasses.asdict(config)}
        cfg.write_text(json.dumps(meta, indent=2) + "\n")
        return [weights, cfg]

    def load(self, directory: Path, base_model, config: AdapterConfig):
        import torch
        from safetensors.torch import load_file

        cfg_path, weights = artifact_files(Path(directory))
        values = json.loads(cfg_path.read_text())
        if "peft_type" in values:
            raise UsageError(f"adapter load: {cfg_path} is a PEFT adapter ({values['peft_type']}), not a bottleneck "
                             "adapter; load it with its own method (e.g. lora) or peft.PeftModel.from_pretrained.")
        method = values.get("peftbench_method", values.get("method", self.name))
        if method != self.name:
            raise UsageError(f"adapter load: {cfg_path} was written by method {method!r}, not {self.name!r}.")
        values = {k: v for k, v in values.items() if k not in META_KEYS}
        model = self.prepare(base_model, self.make_config(values))  # the saved config wins

        saved = load_file(str(weights))
        params = adapter_state(model)
        missing, unexpected = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
        if missing or unexpected:
            raise UsageError(f"adapter load: {weights} does not fit this model (placement "
                             f"{values.get('placement')!r}): missing tensors {missing or 'none'}; "
                             f"unexpected tensors {unexpected or 'none'}.")
        bad = [f"{n}: saved {tuple(saved[n].shape)}, model {tuple(p.shape)}"
               for n, p in params.items() if saved[n].shape != p.shape]
        if bad:
            raise UsageError(f"adapter load: tensor shapes in {weights} differ from the model's: {'; '.join(bad)}.")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(saved[n].to(device=p.device, dtype=p.dtype))
        return model


def artifact_files(directory: Path) -> tuple[Path, Path]:
    """The config and weights of an adapter artifact: this version's names, else those of earlier versions."""
    for names in ((CONFIG, WEIGHTS), OLD_FILES):
        cfg, weights = directory / names[0], directory / names[1]
        if cfg.is_file() and weights.is_file():
            return cfg, weights
    raise UsageError(f"adapter load: {directory} holds no bottleneck adapter; expected {CONFIG} and {WEIGHTS} "
                     f"written by the adapter method's save() (or {' and '.join(OLD_FILES)} from earlier versions).")
