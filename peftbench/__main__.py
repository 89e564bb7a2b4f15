"""``python -m peftbench``: the CLI, for launchers that start a module (``torchrun ... -m peftbench run``)."""

from peftbench.cli.main import main

if __name__ == "__main__":
    main()
