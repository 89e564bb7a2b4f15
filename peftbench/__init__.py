"""peftbench: measure what LoRA, QLoRA, bottleneck adapters and full fine-tuning buy and cost."""

from peftbench.api.hookspecs import hookimpl
from peftbench.api.method import Availability, Capabilities, Method
from peftbench.api.options import option
from peftbench.errors import ConfigError, NotSupported, PeftbenchError, PluginError, UsageError

__version__ = "0.1.0"
__all__ = [
    "Availability", "Capabilities", "ConfigError", "Method", "NotSupported", "PeftbenchError", "PluginError",
    "UsageError", "hookimpl", "option", "__version__",
]
