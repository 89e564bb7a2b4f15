"""Registers the tasks that ship with peftbench (the ``tasks/`` folder)."""

from peftbench.api.hookspecs import hookimpl
from peftbench.tasks.task import builtin_tasks_dir


@hookimpl
def register_tasks(register):
    register(builtin_tasks_dir())
