"""What a process running cells does about its surroundings: SIGTERM handled as Ctrl-C, memory given back
between cells, and (a worker of ``--jobs``) its place: GPU, CPUs, torch threads, and ending with its parent."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import threading
from typing import Any

from peftbench.system.topology import WorkerPlace


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C: the remaining cells are written as cancelled."""


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While cells run, SIGTERM (a job's time limit, ``kill``) is handled as Ctrl-C; a second one during the
    clean-up is ignored. Only the main thread can handle signals: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    before = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def free_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


def pin(place: WorkerPlace) -> None:
    """Take ``place``: its GPU (before CUDA starts in this process), its CPUs and its torch threads."""
    if place.cuda_visible is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = place.cuda_visible
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if place.cpus:
        with contextlib.suppress(AttributeError, OSError):
            os.sched_setaffinity(0, place.cpus)
    if place.threads:
        import torch

        torch.set_num_threads(place.threads)


def die_with_parent() -> None:
    """Linux: SIGTERM this process when its parent dies (a killed parent leaves no worker writing the folder);
    elsewhere a worker sees its parent gone before it claims its next cell."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
