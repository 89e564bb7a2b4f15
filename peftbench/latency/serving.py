"""One base model holding K adapters under distinct names, as a multi-tenant server holds them: adding the
adapters (random-initialised, so they differ from each other and from the base), what each costs in memory,
and the model a mixed batch is timed with -- every row asking for its own adapter through PEFT's per-row
``adapter_names``."""

from __future__ import annotations

import copy
import time
from typing import Any

import torch

from peftbench.latency.casting import cast_floating
from peftbench.latency.serving_config import row_adapters

FIRST = "default"   # the adapter the method's own prepare() creates
INIT_SCALE = 0.2    # random adapter weights ~ N(0, (INIT_SCALE / sqrt(fan_in))^2): a visible but modest change


def adapter_names(count: int) -> list[str]:
    """The names of ``count`` adapters: the method's own first, then ``adapter1``, ``adapter2``, ..."""
    return [FIRST, *(f"adapter{i}" for i in range(1, count))]


def is_multi_adapter(model: Any) -> bool:
    """Whether ``model`` can hold several named adapters: a PEFT model (``add_adapter``, ``set_adapter``)."""
    return all(callable(getattr(model, name, None)) for name in ("add_adapter", "set_adapter", "load_adapter",
                                                                 "delete_adapter")) and hasattr(model, "peft_config")


def randomize_adapter(model: Any, name: str, seed: int) -> int:
    """Give adapter ``name``'s weights random values (seeded: the same values on every run on one kind of
    device), so that adapters differ: an untrained LoRA adapter (B = 0) computes exactly the base model, and a
    mixed batch of such adapters could not be told from the base. DoRA's magnitude vectors (a scale taken from
    the base weights) keep their values. Returns the number of parameters set."""
    generators: dict[torch.device, torch.Generator] = {}
    count = 0
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if f".{name}." not in f"{pname}." or "magnitude" in pname or not p.is_floating_point():
                continue
            if p.device not in generators:  # drawn where the weights are: an 8B model's 32 adapters are 1.3 G values
                generators[p.device] = torch.Generator(p.device).manual_seed(seed)
            std = INIT_SCALE / max(1, p.shape[-1]) ** 0.5
            values = torch.randn(p.shape, generator=generators[p.device], device=p.device, dtype=torch.float32)
            p.copy_(values * std)
            count += p.numel()
    return count


def adapter_bytes(model: Any, name: str) -> int:
    """Bytes of adapter ``name``'s parameters."""
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if f".{name}." in f"{n}.")


def allocated_bytes(device: str) -> int | None:
    """Bytes the CUDA caching allocator hands out now; None on the CPU (no allocator to ask)."""
    if not str(device).startswith("cuda"):
        return None
    torch.cuda.synchronize()
    return int(torch.cuda.memory_allocated())


def add_adapters(model: Any, names: list[str], dtype: torch.dtype, seed: int, device: str) -> dict[str, Any]:
    """Add the adapters ``names[1:]`` to ``model`` (which holds ``names[0]``), each a copy of the first's
    configuration with its own random weights (seed + its index), cast to ``dtype``; then back to
    inference: eval mode, nothing trainable, the first adapter active. Returns what each added adapter
    cost: its parameter bytes, on CUDA the growth of allocated memory per adapter, and the wall seconds each
    ``add_adapter`` took (``add_adapter_s``, in order)."""
    config = model.peft_config[names[0]]
    before = allocated_bytes(device)
    seconds = []  # PEFT's add_adapter walks every module against every adapter held: it slows as they grow
    for i, name in enumerate(names[1:], start=1):
        t0 = time.perf_counter()
        model.add_adapter(name, copy.deepcopy(config))
        seconds.append(round(time.perf_counter() - t0, 4))
        cast_floating(model, dtype)
        randomize_adapter(model, name, seed + i)
    after = allocated_bytes(device)
    to_inference(model, names[0])
    added = len(names) - 1
    return {"adapters": len(names), "parameter_bytes_per_adapter": adapter_bytes(model, names[0]),
            "allocated_bytes_per_adapter": (round((after - before) / added) if added and before is not None
                                            else None),
            "add_adapter_s": seconds}


def to_inference(model: Any, active: str) -> None:
    """``active`` the one adapter in use, eval mode, no parameter trainable (PEFT's ``set_adapter`` and
    ``add_adapter`` make adapters trainable and put new ones in training mode)."""
    model.set_adapter(active)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)


class RowAdapters:
    """The multi-adapter model as a mixed batch sees it: ``generate`` and the forward pass pass PEFT the
    adapter each row asks for (row i: adapter i mod K of the first K). The timer calls it as it calls a
    model (``generate``, ``__call__``, ``config``)."""

    def __init__(self, model: Any, names: list[str], k: int) -> None:
        self.model, self.names, self.k = model, names, k
        self.config = model.config

    def rows(self, ids: torch.Tensor) -> list[str]:
        return row_adapters(self.names, self.k, ids.shape[0])

    def generate(self, **kwargs: Any) -> Any:
        return self.model.generate(adapter_names=self.rows(kwargs["input_ids"]), **kwargs)

    def __call__(self, **kwargs: Any) -> Any:
        return self.model(adapter_names=self.rows(kwargs["input_ids"]), **kwargs)


def mode_peaks(modes: dict[str, Any], ids: torch.Tensor, device: str, tokens: int = 2) -> dict[str, int]:
    """Per mode, the most memory one short ``generate`` of ``ids`` needed beyond what was allocated before it
    (the weights every mode's model holds are already there): on CUDA only, {} on the CPU (a process's peak
    resident set says nothing about one mode)."""
    from peftbench.system.memory import PeakMemory

    if not str(device).startswith("cuda"):
        return {}
    peaks = {}
    for name, factory in modes.items():
        before = allocated_bytes(device)
        with factory() as model, PeakMemory("cuda") as peak, torch.no_grad():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                           min_new_tokens=tokens, do_sample=False, pad_token_id=0)
        peaks[name] = peak.peak - (before or 0)
    return peaks
