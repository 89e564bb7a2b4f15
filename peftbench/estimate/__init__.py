"""Training memory at any scale, by calculation: ``peftbench estimate``.

``architecture`` reads a model's shape (a shipped ``shape:`` config or a ``config.json``; no torch, no
weights), ``setting`` holds what the user asks for (method, GPUs, batch, precision, checkpointing),
``parameters`` counts what each method stores and trains, ``activations`` what a decoder block saves for
its backward pass, ``memory`` adds them up per GPU at each phase of a step, ``throughput`` turns FLOPs into
tokens/s at an assumed utilisation, and ``measured`` compares the result with the peaks committed under
``results/``. docs/estimate.md states every formula.
"""

from peftbench.estimate.architecture import Architecture, load_architecture
from peftbench.estimate.memory import Estimate, estimate
from peftbench.estimate.setting import Setting, parse_memory

__all__ = ["Architecture", "Estimate", "Setting", "estimate", "load_architecture", "parse_memory"]
