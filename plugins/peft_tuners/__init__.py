"""Every PEFT tuner as a peftbench method: ``peft-vera`` (also ``peft:vera``), its options PEFT's own config
fields. Registration reads the catalog file only; peft is imported when a tuner is used."""

from peftbench import hookimpl


@hookimpl
def register_methods(register):
    from .catalog import keys
    from .method import ALIAS, method_name

    for key in keys():
        register(method_name(key), f"peftbench_plugins.peft_tuners.classes:{key}", aliases=(ALIAS + key,))
