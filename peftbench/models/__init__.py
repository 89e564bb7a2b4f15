"""The base model: ``sources`` resolves what the user passed (hub id, folder, .gguf, tiny:, shape:),
``resolved`` loads it; ``hub``, ``folder``, ``gguf``, ``tiny`` and ``shape`` handle one kind of source each."""

# Public API kept for third-party plugins (e.g. plugins/peftbench-ia3 does `from peftbench.models import
# load_model`): this one name stays importable here; peftbench itself imports from peftbench.models.sources.
from peftbench.models.sources import load_model

__all__ = ["load_model"]
