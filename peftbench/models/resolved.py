"""What every model source resolves to: its provenance (:class:`ModelInfo`) and a loader that builds a
fresh, identical base model on every call (:class:`ResolvedModel`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from peftbench.models.shape import shape_model, shape_presets
from peftbench.models.tiny import tiny_model, tiny_tokenizer

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
# quoted by every "not a model source" error, whichever resolver finds the problem
VALID_FORMS = (f"a Hugging Face hub id such as {DEFAULT_MODEL}, a local model folder containing config.json, "
               "a path to a .gguf file, tiny:llama (random weights, for tests), or shape:<arch> (random weights of "
               "a real architecture, for cost at scale: " + ", ".join(shape_presets()) + ")")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ModelInfo:
    """Where the base model came from; JSON-able, goes into every result file."""

    source: str             # what the user passed, e.g. "tiny:llama"
    kind: str               # "tiny" | "shape" | "hub" | "local" | "gguf" | "pypi-gguf"
    resolved: str           # path or hub id actually loaded
    architecture: str       # e.g. "LlamaForCausalLM"
    parameters: int | None  # total parameter count (None until the first load)
    sha256: str | None      # of the GGUF file when one was used, else None
    note: str               # e.g. "dequantized from Q4_1 GGUF"


class ResolvedModel:
    """A checked model source. ``load()`` may be called many times; each call builds a fresh base model."""

    def __init__(self, info: ModelInfo, path: str, local_only: bool = False) -> None:
        self._info = info
        self.path = path              # what from_pretrained reads ("" for tiny presets)
        self._local_only = local_only
        self._parameters: int | None = None

    @property
    def info(self) -> ModelInfo:
        return self._info if self._parameters is None else replace(self._info, parameters=self._parameters)

    def load_tokenizer(self) -> Any:
        if self._info.kind in ("tiny", "shape"):  # shapes have no tokenizer of their own: bytes suffice for cost
            return prepare_tokenizer(tiny_tokenizer())
        from transformers import AutoTokenizer

        return prepare_tokenizer(AutoTokenizer.from_pretrained(self.path, local_files_only=self._local_only))

    def load(self, device: Any = "cpu", dtype: Any = None) -> tuple[Any, Any]:
        """A fresh base model in eval mode on ``device`` with ``dtype`` (default float32), and its tokenizer."""
        import torch

        dtype = dtype or torch.float32
        if self._info.kind == "tiny":
            model = tiny_model(len(tiny_tokenizer()))
        elif self._info.kind == "shape":
            model = shape_model(self._info.resolved.removeprefix("shape:"), device=device, dtype=dtype)
        else:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype, local_files_only=self._local_only)
        model = model.to(device=device, dtype=dtype).eval()
        self._parameters = sum(p.numel() for p in model.parameters())
        return model, self.load_tokenizer()


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Pad on the right with EOS where the model has no pad token: what training and scoring expect."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer
