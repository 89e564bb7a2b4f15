"""Where the workers of ``peftbench run --jobs`` go: the host's GPUs (as ``nvidia-smi`` lists them, so the parent
never initialises CUDA), the CPUs of each GPU's NUMA node (``/sys/bus/pci/devices/<bus id>/local_cpulist``),
how many cells to run at once (``auto_jobs``) and each worker's place (``place_workers``). What cannot be
found is left alone and said so: a worker then runs where the parent would have."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

PCI_DEVICES = Path("/sys/bus/pci/devices")
GIB = 1024**3

# auto --jobs, per GPU: never more than this many cells at once on one GPU ...
MAX_JOBS_PER_GPU = 4
# ... only models this small share a GPU (the weights as stored: bf16 ~1 B parameters); a larger model's
# steps keep the GPU busy on their own, and more cells would only share its compute
SMALL_MODEL_BYTES = 2 * GIB
# what one cell may need on the GPU: full fine-tuning with AdamW holds fp32 weights, gradients and two
# moments (16 B per parameter, 8x a bf16 file), plus the CUDA context and activations
CELL_BYTES_PER_FILE_BYTE, CELL_FIXED_BYTES = 8, 3 * GIB
FREE_SHARE = 0.5  # plan on half the GPU's free memory: cells' peaks vary (long batches, merged copies)
CPUS_PER_JOB = 2  # each cell keeps a host thread busy launching kernels, plus data and lm-eval work


@dataclass(frozen=True)
class Gpu:
    index: int                 # nvidia-smi's index
    uuid: str                  # what a worker's CUDA_VISIBLE_DEVICES names (unambiguous in any device order)
    pci_bus_id: str | None     # as sysfs spells it, e.g. 0000:18:00.0
    total_bytes: int | None
    free_bytes: int | None
    cpus: tuple[int, ...] | None  # the CPUs of its NUMA node that this process may use (None: unknown)


@dataclass(frozen=True)
class WorkerPlace:
    """One worker's place: its GPU (``cuda_visible``: its CUDA_VISIBLE_DEVICES; None leaves it as it is), its
    CPUs (None: all this process may use) and torch threads; ``how`` says what was done, for the record."""

    index: int
    gpu_index: int | None
    cuda_visible: str | None
    cpus: tuple[int, ...] | None
    threads: int | None
    how: str

    def describe(self) -> dict[str, object]:
        return {"worker": self.index, "gpu": self.gpu_index, "cuda_visible_devices": self.cuda_visible,
                "cpus": cpu_list_text(self.cpus) if self.cpus else None, "torch_threads": self.threads,
                "pinning": self.how}


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """'0-3,8,10-11' -> (0, 1, 2, 3, 8, 10, 11); ValueError when it is not such a list."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return tuple(sorted(cpus))


def cpu_list_text(cpus: tuple[int, ...]) -> str:
    """(0, 1, 2, 3, 8) -> '0-3,8'."""
    runs: list[list[int]] = []
    for c in sorted(cpus):
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in runs)


def sysfs_bus_id(smi_bus_id: str) -> str:
    """nvidia-smi's '00000000:18:00.0' as sysfs names the device: '0000:18:00.0'."""
    domain, _, rest = smi_bus_id.strip().lower().partition(":")
    return f"{domain[-4:]}:{rest}" if rest else smi_bus_id.strip().lower()


def node_cpus(bus_id: str, allowed: set[int], devices: Path = PCI_DEVICES) -> tuple[int, ...] | None:
    """The CPUs local to the PCI device ``bus_id`` that this process may use; None when sysfs does not say,
    or none of them is allowed (a container pinned elsewhere)."""
    try:
        local = parse_cpu_list((devices / bus_id / "local_cpulist").read_text())
    except (OSError, ValueError):
        return None
    mine = tuple(c for c in local if c in allowed)
    return mine or None


SMI_QUERY = ["nvidia-smi", "--query-gpu=index,uuid,pci.bus_id,memory.total,memory.free",
             "--format=csv,noheader,nounits"]


def run_smi() -> str | None:
    try:
        out = subprocess.run(SMI_QUERY, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def visible_gpus(smi: Callable[[], str | None] = run_smi, env: Mapping[str, str] | None = None,
                 devices: Path = PCI_DEVICES, allowed: set[int] | None = None) -> list[Gpu] | None:
    """The GPUs this process may use, in CUDA_VISIBLE_DEVICES's order when it is set; None when they cannot be
    listed (no nvidia-smi, or CUDA_VISIBLE_DEVICES names what nvidia-smi does not show, e.g. MIG instances)."""
    env = os.environ if env is None else env
    allowed = allowed if allowed is not None else allowed_cpus()
    text = smi()
    if text is None:
        return None
    gpus = []
    for line in text.strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 5:
            return None
        index, uuid, bus, total, free = fields
        bus_id = sysfs_bus_id(bus) if bus and bus != "[N/A]" else None
        gpus.append(Gpu(int(index), uuid, bus_id, _mib(total), _mib(free),
                        node_cpus(bus_id, allowed, devices) if bus_id else None))
    wanted = env.get("CUDA_VISIBLE_DEVICES")
    if wanted is None:
        return gpus
    chosen = []
    for item in [w.strip() for w in wanted.split(",") if w.strip()]:
        match = [g for g in gpus if item == str(g.index) or (item.startswith("GPU-") and g.uuid.startswith(item))]
        if len(match) != 1:
            return None  # CUDA would stop at the first unknown entry; do not guess
        chosen.append(match[0])
    return chosen


def _mib(text: str) -> int | None:
    try:
        return int(float(text)) * 1024**2
    except ValueError:
        return None


def allowed_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def auto_jobs(device: str, gpus: list[Gpu] | None, model_bytes: int | None, cpus: int) -> tuple[int, str]:
    """How many cells to run at once, and why. CPU: 1 (a cell's torch threads use every core already). CUDA,
    per GPU: 1 for a model of ``SMALL_MODEL_BYTES`` or more, or of unknown size; else as many cells as fit in
    ``FREE_SHARE`` of the GPU's free memory at ``CELL_BYTES_PER_FILE_BYTE`` x the model's weight bytes plus
    ``CELL_FIXED_BYTES`` each, at most ``MAX_JOBS_PER_GPU``, and at most one cell per ``CPUS_PER_JOB`` of its
    CPUs; summed over the GPUs."""
    if device != "cuda":
        return 1, "on the CPU one cell at a time (its torch threads already use every core)"
    if not gpus:
        return 1, "the GPUs could not be listed (nvidia-smi): one cell at a time"
    if model_bytes is None:
        return 1, "the model's size is not known: one cell at a time"
    if model_bytes >= SMALL_MODEL_BYTES:
        return len(gpus), (f"the model ({model_bytes / GIB:.1f} GiB of weights) keeps a GPU busy: one cell per GPU "
                           f"on {len(gpus)} GPU(s)")
    need = CELL_BYTES_PER_FILE_BYTE * model_bytes + CELL_FIXED_BYTES
    per_gpu, share = [], max(1, cpus // len(gpus))
    for g in gpus:
        fit = int(FREE_SHARE * g.free_bytes // need) if g.free_bytes else 1
        own_cpus = len(g.cpus) if g.cpus else share
        per_gpu.append(max(1, min(MAX_JOBS_PER_GPU, fit, max(1, min(own_cpus, share) // CPUS_PER_JOB))))
    return sum(per_gpu), (f"a small model ({model_bytes / GIB:.2f} GiB of weights, ~{need / GIB:.1f} GiB per cell): "
                          f"{'+'.join(map(str, per_gpu))} cell(s) at once on {len(gpus)} GPU(s) (at most "
                          f"{MAX_JOBS_PER_GPU} per GPU, half its free memory, {CPUS_PER_JOB} CPUs per cell)")


def place_workers(jobs: int, device: str, gpus: list[Gpu] | None, allowed: set[int] | None = None
                  ) -> list[WorkerPlace]:
    """``jobs`` workers' places. CUDA: round-robin over the GPUs, each worker pinned to its GPU (by UUID) and
    its GPU's NUMA-node CPUs, which the workers of that node share (torch threads split among them); GPUs
    that cannot be listed: every worker where the parent is. CPU: the allowed CPUs split into ``jobs``
    disjoint sets."""
    allowed = allowed if allowed is not None else allowed_cpus()
    cpus = tuple(sorted(allowed))
    if device != "cuda":
        share = max(1, len(cpus) // jobs)
        places = []
        for i in range(jobs):
            mine = cpus[i * share:(i + 1) * share] if len(cpus) >= jobs else cpus
            places.append(WorkerPlace(i, None, None, mine, len(mine) if len(cpus) >= jobs else 1,
                                      f"CPUs {cpu_list_text(mine)} of {cpu_list_text(cpus)}"))
        return places
    if not gpus:
        return [WorkerPlace(i, None, None, None, None, "not pinned: the GPUs could not be listed (nvidia-smi), "
                                                         "every worker sees the parent's GPUs") for i in range(jobs)]
    on_gpu = [i % len(gpus) for i in range(jobs)]
    places = []
    for i, g in enumerate(on_gpu):
        gpu = gpus[g]
        if gpu.cpus:
            node = gpu.cpus  # workers of GPUs on one node share its CPUs: split the threads among all of them
            sharing = sum(1 for j in on_gpu if gpus[j].cpus == node)
            threads = max(1, len(node) // sharing)
            how = f"GPU {gpu.index} ({gpu.pci_bus_id}), its NUMA node's CPUs {cpu_list_text(node)}"
        else:
            node, threads = None, max(1, len(cpus) // jobs)
            how = f"GPU {gpu.index}; CPUs not pinned (its NUMA node is not known)"
        places.append(WorkerPlace(i, gpu.index, gpu.uuid, node, threads, how))
    return places


def model_bytes(path: str) -> int | None:
    """The bytes of a model's weight files (a folder's *.safetensors, else *.bin; a single file's size);
    None when there are none to count (a model built in code, or not downloaded)."""
    p = Path(path) if path else None
    if p is None or not p.exists():
        return None
    if p.is_file():
        return p.stat().st_size
    for pattern in ("*.safetensors", "*.bin"):
        files = [f for f in p.rglob(pattern) if f.is_file()]
        if files:
            return sum(f.stat().st_size for f in files)
    return None
