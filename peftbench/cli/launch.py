"""``peftbench run --nproc N``: the same command again, under torchrun, N processes on this host."""

from __future__ import annotations

import os
import subprocess
import sys

from peftbench.errors import UsageError


def relaunch_under_torchrun(nproc: int) -> None:
    """Run this command line again under ``torchrun --standalone --nproc-per-node nproc`` (without --nproc)
    and exit with its status; return at once under torchrun itself (its world must be ``nproc``) or for one
    process."""
    if nproc < 1:
        raise UsageError(f"--nproc {nproc}: give a number of processes (1 or more, e.g. --nproc 2).")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        if int(os.environ["WORLD_SIZE"]) != nproc:
            raise UsageError(f"--nproc {nproc}: this command already runs under torchrun with "
                             f"{os.environ['WORLD_SIZE']} processes; leave --nproc out under torchrun.")
        return
    if nproc == 1:
        return
    args = without_nproc(sys.argv[1:])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "peftbench", *args]
    try:
        sys.exit(subprocess.call(cmd))
    except KeyboardInterrupt:  # torchrun passes Ctrl-C on to the processes, which keep what finished
        sys.exit(130)


def without_nproc(args: list[str]) -> list[str]:
    """The command line with its --nproc flag (``--nproc N`` or ``--nproc=N``) left out."""
    if "run" not in args or not any(a == "--nproc" or a.startswith("--nproc=") for a in args):
        raise UsageError("--nproc: this process's command line does not hold it (was peftbench run called from "
                         "Python?); start it under torchrun yourself: python -m torch.distributed.run "
                         "--nproc-per-node N -m peftbench run ...")
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out
