"""Registers the tasks that ship with peftbench (the ``tasks/`` folder)."""

from .hookspecs import hookimpl
from .tasks import builtin_tasks_dir


@hookimpl
def register_tasks(register):
    register(builtin_tasks_dir())
