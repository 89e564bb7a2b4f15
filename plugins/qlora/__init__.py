"""QLoRA: LoRA on a 4-bit (NF4/FP4) base quantized with bitsandbytes."""

from peftbench import hookimpl


@hookimpl
def register_methods(register):
    register("qlora", "peftbench_plugins.qlora.method:QLoraMethod")
