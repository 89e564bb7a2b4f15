"""A decoder-only model's shape, read from its transformers config (a shipped ``shape:`` JSON or a
``config.json``): the numbers the memory formulas need, without torch or weights."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftbench.errors import UsageError
from peftbench.models.shape import shape_config, shape_presets

REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


@dataclass(frozen=True)
class Architecture:
    """A Llama-style decoder: RMSNorm, GQA attention with RoPE, a SwiGLU MLP, no biases."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool  # the LM head is the input embedding

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    def linears(self) -> dict[str, tuple[int, int]]:
        """One block's linear layers: name -> (in_features, out_features)."""
        h, i = self.hidden, self.intermediate
        return {"q_proj": (h, self.q_width), "k_proj": (h, self.kv_width), "v_proj": (h, self.kv_width),
                "o_proj": (self.q_width, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def block_matrix_params(self) -> int:
        return sum(a * b for a, b in self.linears().values())

    def block_params(self) -> int:
        return self.block_matrix_params() + 2 * self.hidden  # and its two RMSNorm weights

    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    def head_params(self) -> int:
        """The LM head's own parameters (0 when tied to the embedding)."""
        return 0 if self.tied else self.vocab * self.hidden

    def total_params(self) -> int:
        return self.layers * self.block_params() + self.embedding_params() + self.head_params() + self.hidden


def from_config(values: dict[str, Any], name: str) -> Architecture:
    """The architecture of a transformers config dict; a config without the fields is a usage error."""
    missing = [k for k in REQUIRED if not isinstance(values.get(k), int) or values[k] < 1]
    if missing:
        raise UsageError(f"model {name!r}: its config lacks {', '.join(missing)} (positive integers); the "
                         "estimate reads a decoder-only transformers config (Llama, Qwen2, Mistral style).")
    heads = values["num_attention_heads"]
    head_dim = values.get("head_dim") or values["hidden_size"] // heads
    return Architecture(name=name, hidden=values["hidden_size"], intermediate=values["intermediate_size"],
                        layers=values["num_hidden_layers"], heads=heads,
                        kv_heads=values.get("num_key_value_heads") or heads, head_dim=head_dim,
                        vocab=values["vocab_size"], tied=bool(values.get("tie_word_embeddings", False)))


def known_shapes() -> list[str]:
    """Every ``shape:`` name the estimate reads: the model sources' shipped configs."""
    return shape_presets()


def load_architecture(model: str) -> Architecture:
    """``shape:NAME`` (a shipped config), a ``config.json`` file, or a folder holding one."""
    if model.startswith("shape:"):
        if model not in known_shapes():
            raise UsageError(f"unknown model {model!r}: the shipped shapes are {', '.join(known_shapes())}; or "
                             "give a config.json (or a folder holding one).")
        return from_config(shape_config(model.removeprefix("shape:")), model)
    path = Path(model)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise UsageError(f"unknown model {model!r}: not a shipped shape ({', '.join(known_shapes())}) and no "
                         "config.json there. The estimate reads configs only (no hub downloads).")
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"model {model!r}: cannot read {path} as JSON ({e}).") from None
    return from_config(values.get("text_config", values), model)
