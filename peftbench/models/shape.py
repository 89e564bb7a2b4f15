"""``shape:<name>``: random-init models of real architectures, for cost at real scale (no accuracy).

Each shape is a transformers config shipped in ``peftbench/models/shapes/<name>.json``; keys starting
with ``_`` (such as ``_source``) are notes for people, not config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SHAPES_DIR = Path(__file__).parent / "shapes"


def shape_presets() -> list[str]:
    """``shape:<name>`` sources: random-init models of real architectures (configs in ``peftbench/models/shapes``)."""
    return sorted(f"shape:{p.stem}" for p in SHAPES_DIR.glob("*.json"))


def shape_config(name: str) -> dict[str, Any]:
    """The shipped JSON of shape ``name`` (``smollm2-135m``, not ``shape:smollm2-135m``)."""
    return json.loads((SHAPES_DIR / f"{name}.json").read_text())


def shape_model(name: str, device: Any = "cpu", dtype: Any = None) -> Any:
    """A random-init model of a shipped architecture, built directly on ``device`` in ``dtype`` (no CPU copy
    of an 8B model first); seeded, without touching the global RNG state. ``device="meta"`` builds it
    without memory (parameter counts, shapes)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    values = {k: v for k, v in shape_config(name).items() if not k.startswith("_")}
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(config, dtype=dtype or torch.float32)
