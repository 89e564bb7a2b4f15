"""peftbench: measure what LoRA, QLoRA, bottleneck adapters and full fine-tuning buy and cost."""

from peftbench.api.hookspecs import hookimpl
from peftbench.api.method import Availability, Capabilities, Method
from peftbench.api.options import option
from peftbench.errors import ConfigError, NotSupported, PeftbenchError, PluginError, UsageError

__version__ = "0.1.0"
__all__ = [
    "Availability", "Capabilities", "ConfigError", "Method", "NotSupported", "PeftbenchError", "PluginError",
    "UsageError", "hookimpl", "load_artifact", "option", "__version__",
]


def __getattr__(name: str):
    """``peftbench.load_artifact``, imported on first use (``import peftbench`` imports no torch)."""
    if name == "load_artifact":
        from peftbench.session.artifacts import load_artifact

        return load_artifact
    raise AttributeError(f"module 'peftbench' has no attribute {name!r}")
