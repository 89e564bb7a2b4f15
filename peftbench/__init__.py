"""peftbench: measure what LoRA, QLoRA, bottleneck adapters and full fine-tuning buy and cost."""

from .errors import ConfigError, NotSupported, PeftbenchError, PluginError, UsageError
from .hookspecs import hookimpl
from .method import Availability, Capabilities, Method

__version__ = "0.1.0"
__all__ = [
    "Availability", "Capabilities", "ConfigError", "Method", "NotSupported", "PeftbenchError", "PluginError",
    "UsageError", "hookimpl", "__version__",
]
