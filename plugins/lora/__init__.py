"""LoRA on the ``peft`` library."""

from peftbench import hookimpl


@hookimpl
def register_methods(register):
    register("lora", "peftbench_plugins.lora.method:LoraMethod")
