"""Training one cell on several processes with FSDP2: the process group, the sharded model, each rank's
share of a micro-batch, the gathered weights, and a rank's failure.

Issue 26: ``peftbench.train.loop.train`` trains over a ``World``, ``peftbench run`` under torchrun shards each
cell with it (``peftbench.session.sharded``); tests/test_fsdp.py and tests/test_fsdp_run.py check it
(docs/distributed.md).

The same optimizer step as on one process: every rank draws the same micro-batches (same seed, same order)
and computes on its share of each micro-batch's examples. The loop's loss is a micro-batch's mean over its
answer tokens, so a rank's mean is weighted by its share of the micro-batch's answer tokens; summed over
the ranks, the weighted losses (and their gradients) are the one-process loss (and gradient). FSDP averages
gradients over the ranks (a reduce-scatter divided by the world size), so the weight carries a factor of
the world size too.
"""

from __future__ import annotations

import datetime
import json
import os
import pickle
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch
import torch.distributed as dist

from peftbench.errors import ConfigError
from peftbench.train.batching import TrainData, batch_order, collate, collate_packed
from peftbench.train.plan import transformer_blocks

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 600.0  # how long a collective, or the wait for every rank after a failure, may take


# ---- the process group -----------------------------------------------------------------------------------

@dataclass
class World:
    """This process's place among the ones training together (one process: rank 0 of 1, no group)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None  # 'nccl' or 'gloo'; None: one process, no process group
    device: str = "cpu"         # what the loop calls the device: 'cuda' (this rank's GPU, set current) or 'cpu'
    timeout_s: float = DEFAULT_TIMEOUT_S
    store: Any = field(default=None, repr=False)  # the rendezvous store: failures are posted there
    generation: int = 0         # process groups made so far (a failure replaces the group)
    runs: int = 0               # ``run_together`` calls so far: the same count on every rank, failed or not
    waits: int = 0              # ``wait_for_all`` calls in the current run (each has its own keys)
    announced: int = 0          # ``announce`` calls so far (rank 0's messages to the others, in order)
    broken: bool = False        # a rank hung: no new group can form, the session has to stop

    @property
    def main(self) -> bool:
        """Whether this process writes results (rank 0)."""
        return self.rank == 0

    @property
    def grouped(self) -> bool:
        """Whether a process group joins this process to others (torchrun started it)."""
        return self.backend is not None

    def record(self) -> dict[str, Any]:
        """How the run was spread, for its run file."""
        return {"world_size": self.size, "backend": self.backend}


def join_world(device: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> World:
    """This process's ``World``: from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT) a process group, NCCL on CUDA (one GPU per process, by local rank) and gloo on the CPU;
    without that environment, one process alone. ``device``: 'cuda' or 'cpu' (default: CUDA when there is one)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return World(device=device, timeout_s=timeout_s)
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"local rank {local_rank} has no GPU: this host has {torch.cuda.device_count()}; "
                              "start at most that many processes per node (torchrun --nproc-per-node).")
        torch.cuda.set_device(local_rank)
    store, _, _ = next(dist.rendezvous("env://", rank=rank, world_size=size,
                                       timeout=datetime.timedelta(seconds=timeout_s)))
    world = World(rank, size, local_rank, "nccl" if device == "cuda" else "gloo", device, timeout_s, store)
    _init_group(world)
    return world


def _init_group(world: World) -> None:
    """The default process group of ``world``'s current generation, on its own keys of the store (a group
    made after a failure must not read the old group's addresses)."""
    dist.init_process_group(world.backend, store=dist.PrefixStore(f"peftbench/group{world.generation}", world.store),
                            rank=world.rank, world_size=world.size,
                            timeout=datetime.timedelta(seconds=world.timeout_s))


def renew_group(world: World) -> None:
    """Replace the process group (every rank calls this): after a rank's failure the old one is unusable."""
    if dist.is_initialized():
        dist.destroy_process_group()
    world.generation += 1
    _init_group(world)


class PeerFailed(RuntimeError):
    """Another rank failed in this run while this one waited for it in ``wait_for_all``."""


def wait_for_all(world: World, patient: bool = False) -> None:
    """Wait until every rank has got here (each calls this), on the rendezvous store rather than in a
    collective: for waits of uneven length (one rank building a model or evaluating while the others are
    idle), which the collectives' timeout would cut short. Raises ``PeerFailed`` as soon as a rank has failed
    in the current ``run_together`` (it will not come), and the store's timeout after ``2 x timeout_s + 60`` s;
    ``patient``: no timeout (the others wait for rank 0 evaluating alone, however long that takes: should its
    process die, torchrun ends the others)."""
    if not world.grouped:
        return
    world.waits += 1
    run = _run_keys(world)
    keys = dist.PrefixStore(f"wait{world.waits}", run)
    if keys.add("arrived", 1) == world.size:
        keys.set("all", "1")
    deadline = time.monotonic() + _store_wait_s(world)
    while True:
        try:
            keys.wait(["all"], datetime.timedelta(seconds=1))
            return
        except dist.DistStoreError:
            if run.check(["failures"]):
                raise PeerFailed("another rank failed in this run (see its failure)") from None
            if not patient and time.monotonic() > deadline:
                raise


def _run_keys(world: World) -> Any:
    """The store's keys of the current ``run_together`` call (or of none yet: run 0)."""
    return dist.PrefixStore(f"peftbench/run{world.runs}", world.store)


def _store_wait_s(world: World) -> float:
    return 2 * world.timeout_s + 60  # a peer's collective timeout, and then some


def announce(world: World, value: Any) -> None:
    """Rank 0 tells the others ``value`` (picklable: what to do next), through the store; they read it with
    ``announced``, in the same order."""
    world.announced += 1
    world.store.set(f"peftbench/announce{world.announced}", pickle.dumps(value))


def announced(world: World) -> Any:
    """The next value rank 0 gave ``announce`` (on the other ranks), waiting for it as long as it takes: rank 0
    may be writing files or checking a folder first (should its process die, torchrun ends this one)."""
    world.announced += 1
    key = f"peftbench/announce{world.announced}"
    while True:
        try:
            world.store.wait([key], datetime.timedelta(seconds=5))
            return pickle.loads(world.store.get(key))
        except dist.DistStoreError:
            continue


def leave_world(world: World) -> None:
    """Close the process group, if any."""
    if world.grouped and dist.is_initialized():
        dist.destroy_process_group()


# ---- the sharded model -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ShardPolicy:
    """How ``shard_model`` shards (FSDP2's ``fully_shard``)."""

    precision: str = "auto"  # 'auto': bf16 compute and fp32 gradient reduction on CUDA, fp32 on CPU; 'fp32'; 'bf16'
    cpu_offload: bool = False  # sharded parameters, gradients and optimizer state kept in host memory
    reshard_after_forward: bool = True  # free gathered weights after each block's forward (gather again in backward)

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"shard option precision={self.precision!r}: valid are 'auto', 'fp32', 'bf16'.")


def mixed_precision(policy: ShardPolicy, device: str) -> tuple[Any, str]:
    """FSDP's mixed-precision policy and how it is recorded. The sharded parameters keep the dtype they were
    loaded in (fp32 master weights and optimizer state when loaded in fp32); bf16 is the dtype they are
    gathered and computed in, with gradients reduced in fp32. 'auto' is fp32 on the CPU, as the one-process
    loop is (it autocasts to bf16 on CUDA only)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    bf16 = policy.precision == "bf16" or (policy.precision == "auto" and device == "cuda")
    if not bf16:
        return MixedPrecisionPolicy(), "fp32 (parameters as loaded)"
    return (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32),
            "bf16 compute, fp32 gradient reduction, parameters as loaded")


def shard_model(model: torch.nn.Module, trainable: list[tuple[str, torch.nn.Parameter]], world: World,
                policy: ShardPolicy = ShardPolicy()) -> tuple[list[torch.nn.Parameter], dict[str, Any]]:
    """Shard ``model`` in place over ``world``'s ranks with FSDP2: each transformer block, then the decoder
    body (embeddings, final norm) and the LM head as groups of their own where they are not tied, then the
    root. Frozen parameters (a LoRA or adapter's base) are sharded too; only the trainable ones get
    gradients. Returns the trainable parameters as they are after sharding (``trainable``, a method's
    ``trainable_parameters(model)``, names them: sharding replaces every parameter, so an optimizer must be
    made from these, and the caller should drop ``trainable``: it holds the unsharded originals, a whole
    second copy of the trainable weights while it lives) and the record of how it sharded (for the run file:
    ``whole_forward`` says whether the loss must call the model itself, rather than its decoder and head
    apart)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    names = [name for name, _ in trainable]
    mp, precision = mixed_precision(policy, world.device)
    stored = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters() if not p.is_floating_point()})
    if stored and mp.param_dtype is not None:
        raise ConfigError(f"FSDP with {policy.precision} precision ({precision}) would cast the {'/'.join(stored)} "
                          "storage of a quantized base to bf16 and corrupt it; store the 4-bit weights as bf16 "
                          "(bitsandbytes quant_storage=torch.bfloat16, as FSDP-QLoRA does) or shard with "
                          "precision='fp32'.")
    quantized = _keep_quant_states(model)
    mesh = init_device_mesh(world.device, (world.size,))
    offload = CPUOffloadPolicy(pin_memory=world.device == "cuda") if policy.cpu_offload else OffloadPolicy()
    shard = dict(mesh=mesh, mp_policy=mp, offload_policy=offload)

    decoder, head = _decoder_and_head(model)
    blocks = transformer_blocks(decoder)
    if blocks is None:
        raise ConfigError(f"FSDP: {type(model).__name__} has no repeated transformer blocks (decoder.layers) to "
                          "shard one by one; train it on one process.")
    for i, block in enumerate(blocks):  # the last block's weights are needed again first in backward: kept
        fully_shard(block, reshard_after_forward=policy.reshard_after_forward and i < len(blocks) - 1, **shard)
    units = [f"blocks x{len(blocks)}"]
    tied = head_is_tied(model)
    if head is not None and not tied:  # the fast loss runs decoder and head apart: each gathers its own weights
        fully_shard(decoder, reshard_after_forward=policy.reshard_after_forward, **shard)
        fully_shard(head, reshard_after_forward=policy.reshard_after_forward, **shard)
        units += ["decoder (embeddings, norm)", "head"]
    fully_shard(model, reshard_after_forward=policy.reshard_after_forward, **shard)
    units.append("root")

    after = dict(model.named_parameters())
    missing = [n for n in names if n not in after]
    if missing:
        raise ConfigError(f"FSDP: trainable parameters {missing[:3]} are not among the model's parameters after "
                          "sharding; pass the method's trainable_parameters(model) of this model.")
    params = [after[n] for n in names]
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in params})
    return params, {"fsdp": "fully_shard (FSDP2)", "world_size": world.size, "backend": world.backend,
                    "units": units, "precision": precision, "trainable_dtype": ",".join(dtypes),
                    "cpu_offload": policy.cpu_offload, "reshard_after_forward": policy.reshard_after_forward,
                    "whole_forward": head is None or tied, "quantized_layers": quantized}


def _keep_quant_states(model: torch.nn.Module) -> int:
    """bitsandbytes' 4-bit layers keep their quantization state (scales, shape) on the weight tensor, which
    sharding replaces; kept on the layer too, bitsandbytes puts it back on the gathered weight at each
    forward (its own path for FSDP). Returns the number of such layers."""
    count = 0
    for module in model.modules():
        own = dict(module.named_parameters(recurse=False))  # (not a wrapper's view of its base layer's weight)
        state = getattr(own.get("weight"), "quant_state", None)
        if state is not None:
            module.quant_state = state
            count += 1
    return count


def head_is_tied(model: torch.nn.Module) -> bool:
    """Whether the LM head shares its weight with the decoder (tied embeddings): sharded together, and the
    loss must call the whole model, not the decoder and the head apart."""
    decoder, head = _decoder_and_head(model)
    if decoder is None or head is None:
        return False
    ours = {id(p) for p in decoder.parameters()}
    return any(id(p) in ours for p in head.parameters())


def _decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module | None, torch.nn.Module | None]:
    """The transformer body and the LM head of ``model`` (a PEFT model's base's), either ``None`` if absent."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    get_dec, get_head = getattr(base, "get_decoder", None), getattr(base, "get_output_embeddings", None)
    return (get_dec() if callable(get_dec) else None), (get_head() if callable(get_head) else None)


# ---- each rank's share of a micro-batch ------------------------------------------------------------------

def check_split(batch_size: int, n_examples: int, world: World) -> None:
    """A clear error when a micro-batch has fewer examples than there are ranks (a rank would have none)."""
    size = min(batch_size, n_examples)
    if size < world.size:
        raise ConfigError(f"train option batch_size={batch_size}: a micro-batch of {size} examples cannot be split "
                          f"over {world.size} processes; use batch_size >= {world.size} (or fewer processes).")


def rank_batches(data: TrainData, batch_size: int, seed: int, world: World, padding_free: bool = False
                 ) -> Iterator[dict[str, torch.Tensor]]:
    """Endless micro-batches for this rank: its share of each micro-batch ``batching.batches`` draws for the
    seed (the same examples, in ``batch_order``), collated padded or packed, with ``loss_weight`` (multiply
    the micro-batch's mean loss by it) and ``global_tokens`` (the whole micro-batch's real tokens, for the
    token budget and throughput)."""
    check_split(batch_size, len(data), world)
    for _, idx in batch_order(data, batch_size, seed):
        yield rank_share(data, idx, world, padding_free)


def rank_share(data: TrainData, idx: list[int], world: World, padding_free: bool) -> dict[str, torch.Tensor]:
    """This rank's contiguous share of the micro-batch of examples ``idx``, weighted by its answer tokens.
    Every share is collated (one micro-batch's worth of host work, as on one process) so the micro-batch's
    answer-token count is the one the loss sees, with no collective."""
    collate_fn = collate_packed if padding_free else collate
    bounds = [len(idx) * r // world.size for r in range(world.size + 1)]
    shares = [collate_fn(data, idx[bounds[r]:bounds[r + 1]]) for r in range(world.size)]
    answers = [int((s["labels"][:, 1:] != -100).sum()) for s in shares]
    mine = shares[world.rank]
    mine["loss_weight"] = torch.tensor(world.size * answers[world.rank] / sum(answers), dtype=torch.float32)
    mine["global_tokens"] = torch.tensor(sum(len(data.input_ids[i]) for i in idx))
    return mine


def reduce_mean_loss(step_loss: float, world: World) -> float:
    """The optimizer step's loss as one process reports it, from this rank's weighted loss: the weighted
    losses sum to world size x the step's loss (the same number on every rank, so all stop together on a
    diverged step)."""
    if not world.grouped:
        return step_loss
    t = torch.tensor([step_loss], dtype=torch.float64, device=world.device)
    dist.all_reduce(t)
    return float(t) / world.size


# ---- gathered weights ------------------------------------------------------------------------------------

def full_state_dict(model: torch.nn.Module, world: World) -> dict[str, torch.Tensor] | None:
    """Every weight of the sharded ``model``, gathered whole into host memory on rank 0 (``None`` on the
    other ranks; every rank must call it). Load it into an unsharded copy of the model (the method's
    ``prepare`` on a fresh base) to evaluate, time or save on one rank."""
    if not world.grouped:
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if world.main else None


def unsharded_copy(model: torch.nn.Module, world: World, build: Callable[[], torch.nn.Module]
                   ) -> torch.nn.Module | None:
    """On rank 0, ``build()`` (the method's ``prepare`` on a fresh base: the same modules, unsharded) holding
    the sharded ``model``'s gathered weights, every one of them (a strict load); ``None`` on the other ranks.
    Every rank must call it. Evaluation, latency and the artifact then run on it as on one process."""
    state = full_state_dict(model, world)
    if not world.main:
        return None
    fresh = build()
    fresh.load_state_dict(state)
    return fresh


# ---- a rank's failure ------------------------------------------------------------------------------------

@dataclass
class RankFailure:
    """What one rank raised, in the order the ranks failed (``order`` 1 stopped the others)."""

    rank: int
    order: int
    error: str
    traceback: str

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "order": self.order, "error": self.error, "traceback": self.traceback}


@dataclass
class Together(Generic[T]):
    """What ``run_together`` returns: this rank's value (``None`` if any rank failed) and every rank's failure."""

    value: T | None
    failures: list[RankFailure]

    @property
    def ok(self) -> bool:
        return not self.failures

    def error(self) -> str | None:
        """The first failure, as a cell records it: 'rank R: Error: message', with the ranks it stopped."""
        if not self.failures:
            return None
        first, rest = self.failures[0], self.failures[1:]
        stopped = f" (stopped rank{'s' if len(rest) > 1 else ''} {', '.join(str(f.rank) for f in rest)})" if rest else ""
        return f"rank {first.rank}: {first.error}{stopped}"


def run_together(world: World, fn: Callable[[], T]) -> Together[T]:
    """``fn()`` on every rank (each calls this), and every rank's failure gathered to all. A rank that raises
    posts its exception and traceback to the rendezvous store and leaves its process group; ranks waiting
    for it in ``wait_for_all`` stop at once (``PeerFailed``), ranks blocked with it in a collective at the
    collective timeout (``World.timeout_s``: see ``_close_group``). Every rank then waits, on the store, for
    all to finish, reads the failures (in the order they happened) and, if there were any, joins a new
    process group for what comes next. A rank that does not finish in time is recorded as hung and
    ``world.broken`` set: no new group can form, the session must stop."""
    if not world.grouped:
        try:
            return Together(fn(), [])
        except Exception as e:
            return Together(None, [RankFailure(0, 1, _describe(e), traceback.format_exc())])
    world.runs, world.waits = world.runs + 1, 0
    keys = _run_keys(world)
    value: T | None = None
    failed: tuple[str, str] | None = None
    try:
        value = fn()
    except Exception as e:
        failed = _describe(e), traceback.format_exc()
    if failed is not None:
        order = keys.add("failures", 1)  # an atomic counter: who failed first
        keys.set(f"failure/{world.rank}", json.dumps({"order": order, "error": failed[0], "traceback": failed[1]}))
        _close_group()
    keys.set(f"done/{world.rank}", "1")
    failures = _wait_for_ranks(keys, world)
    if failures and not world.broken:
        renew_group(world)
    return Together(None if failures else value, failures)


def _close_group() -> None:
    """Leave the failed group. Peers blocked in a collective with this rank fail at the group's timeout:
    gloo closes a group's connections only when the process exits (neither ``abort()`` nor destroying the
    group closes them while FSDP's states still hold it), so a failure costs up to ``World.timeout_s``."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _wait_for_ranks(keys: Any, world: World) -> list[RankFailure]:
    """Every rank's failure once all have finished; a rank that has not finished in time counts as hung."""
    done = [f"done/{r}" for r in range(world.size)]
    hung: list[int] = []
    try:
        keys.wait(done, datetime.timedelta(seconds=_store_wait_s(world)))
    except dist.DistStoreError:  # the store's timeout: find out who is missing
        hung = [r for r in range(world.size) if not keys.check([f"done/{r}"])]
        world.broken = True
    failures = []
    for r in range(world.size):
        if keys.check([f"failure/{r}"]):
            posted = json.loads(keys.get(f"failure/{r}"))
            failures.append(RankFailure(r, posted["order"], posted["error"], posted["traceback"]))
    failures.sort(key=lambda f: f.order)
    failures += [RankFailure(r, len(failures) + 1 + i, f"did not finish within {_store_wait_s(world):g} s "
                             "(hung?)", "") for i, r in enumerate(hung)]
    return failures


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e)[:500]}"
