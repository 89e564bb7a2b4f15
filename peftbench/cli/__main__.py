"""``python -m peftbench.cli``: the same as the ``peftbench`` command."""

from peftbench.cli.main import main

main()
