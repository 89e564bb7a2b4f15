"""A plugin for tests/test_fsdp_run.py: rank R raises after optimizer step K of the cells of one method and
seed, as named by PEFTBENCH_TEST_FAIL=METHOD:SEED:R@K (loaded with PEFTBENCH_PLUGINS=fsdp_fail_plugin)."""

import os

from peftbench.api.hookspecs import hookimpl


class InjectedFailure(RuntimeError):
    pass


@hookimpl
def train_step_end(run, step, metrics):
    method, seed, where = os.environ["PEFTBENCH_TEST_FAIL"].split(":")
    rank, _, at = where.partition("@")
    here = run.world.rank if run.world is not None else 0
    if (run.spec.method, run.spec.seed, here, step) == (method, int(seed), int(rank), int(at)):
        raise InjectedFailure(f"injected on rank {here} after step {step}")
