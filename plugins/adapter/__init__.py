"""Bottleneck adapters (Houlsby / Pfeiffer series, and parallel): peftbench's own module; PEFT has none."""
from peftbench import hookimpl


@hookimpl
def register_methods(register):
    register("adapter", "peftbench_plugins.adapter.method:AdapterMethod", aliases=("bottleneck",))
