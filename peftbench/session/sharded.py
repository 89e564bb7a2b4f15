"""A cell trained by several processes (torchrun, ``peftbench run --nproc``; docs/distributed.md).

Every rank loads and prepares the model, shards it (FSDP2) and trains its share of each micro-batch; then
the weights are gathered into a fresh prepared model on rank 0, which probes, scores, merges, saves and
times it alone, as one process would (so its figures mean the same), while the others wait. A failure on
any rank is raised past the cell: ``peftbench.train.distributed.run_together`` gathers every rank's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from peftbench.api.records import RunContext


def together(world: Any) -> bool:
    """Whether ``world`` (a ``World`` or None) joins this process to others."""
    return world is not None and world.grouped


def shard_cell(run: RunContext, model: Any) -> dict[str, Any] | None:
    """Shard the prepared ``model`` over ``run.world`` by the run's fsdp_* options; the record for the run
    file (``train.distributed``), or None on one process."""
    if not together(run.world):
        return None
    from peftbench.train.distributed import ShardPolicy, shard_model, wait_for_all

    cfg, world = run.train_config, run.world
    wait_for_all(world)  # the ranks loaded their models at their own pace: from here they shard and train in step
    policy = ShardPolicy(precision=cfg.fsdp_precision, cpu_offload=cfg.fsdp_cpu_offload,
                         reshard_after_forward=cfg.fsdp_reshard_after_forward)
    _, shard = shard_model(model, run.method.trainable_parameters(model), world, policy)
    return {**world.record(), **shard}


def gather_cell(run: RunContext, model: Any, build: Callable[[], Any]) -> Any:
    """The trained weights of the sharded ``model`` in ``build()`` (a fresh prepared model) on rank 0; None
    on the other ranks, whose part of the cell ends here."""
    from peftbench.train.distributed import unsharded_copy

    fresh = unsharded_copy(model, run.world, build)
    if fresh is not None:
        fresh.eval()
    return fresh


def main_rank(world: Any) -> bool:
    """Whether this process does the cell's work that one process does alone (rank 0, or no world)."""
    return not together(world) or world.main
