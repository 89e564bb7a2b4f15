"""Full fine-tuning: every parameter trains; the artifact is the whole model."""

from peftbench import hookimpl


@hookimpl
def register_methods(register):
    register("full", "peftbench_plugins.full.method:FullMethod", aliases=("full-ft", "fft"))
