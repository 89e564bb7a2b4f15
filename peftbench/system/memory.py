"""Peak memory of a phase: CUDA peak allocated on GPU, peak resident set size (RSS) on CPU. Also what other
processes used while a timing ran: GPU memory (``gpu_others_bytes``) and host CPU (``host_others_cores``)."""

from __future__ import annotations

import contextlib
import os
import resource
import time


def _vm_hwm() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_rss_peak() -> bool:
    """Linux resets the peak RSS counter (VmHWM) when 5 is written to /proc/self/clear_refs."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.peak`` (bytes) and ``m.kind`` (what was measured)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak = 0
        self.kind = ""

    def __enter__(self) -> PeakMemory:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.kind = "cuda_max_allocated"
        else:
            self.kind = "cpu_peak_rss" if _reset_rss_peak() and _vm_hwm() else "cpu_process_peak_rss"
        return self

    def __exit__(self, *exc) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            self.peak = int(torch.cuda.max_memory_allocated())
        else:
            hwm = _vm_hwm()
            self.peak = hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


SHARED_GPU_BYTES = 3 * 1024**3  # more than this process's context and libraries take: another process is there


def gpu_others_bytes() -> int | None:
    """Bytes in use on the current CUDA device beyond what this process's caching allocator holds, as the
    driver reports them: this process's CUDA context and libraries (well under ``SHARED_GPU_BYTES``) plus
    whatever other processes use. Above ``SHARED_GPU_BYTES`` the GPU was shared, and times measured then
    are not the method's alone. ``None`` without an initialised CUDA device."""
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    free, total = torch.cuda.mem_get_info()
    return max(0, int(total - free - torch.cuda.memory_reserved()))


HOST_BUSY_CORES = 1.0  # other processes' mean CPU use (cores) above which a timing is flagged 'host busy'


def _proc_tree_cpu_s() -> float | None:
    """CPU seconds used by this process and its live descendants (compile workers, data loaders), with the
    children they have reaped, from ``/proc/<pid>/stat``; ``None`` where ``/proc`` is not there."""
    tick = os.sysconf("SC_CLK_TCK")
    me = os.getpid()
    parent: dict[int, int] = {}
    used: dict[int, float] = {}
    try:
        pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue   # exited meanwhile, or unreadable
        parent[pid] = int(fields[1])
        used[pid] = sum(int(x) for x in fields[11:15]) / tick  # utime, stime, cutime, cstime
    if me not in used:
        return None
    total = 0.0
    for pid, cpu in used.items():
        p, hops = pid, 0
        while p not in (me, 0, 1) and hops < 64:
            p, hops = parent.get(p, 0), hops + 1
        if p == me:
            total += cpu
    return total


def cpu_sample() -> tuple[float, float, float] | None:
    """(monotonic s, CPU s the whole host has spent busy, CPU s of this process tree) on Linux, else ``None``.
    Two samples give :func:`host_others_cores`."""
    try:
        with open("/proc/stat") as f:
            first = f.readline().split()
    except OSError:
        return None
    if len(first) < 9 or first[0] != "cpu":
        return None
    v = [int(x) for x in first[1:9]]  # user nice system idle iowait irq softirq steal (guest is inside user)
    own = _proc_tree_cpu_s()
    if own is None:
        return None
    return time.monotonic(), (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK"), own


def neighbour_flags(record: dict) -> list[str]:
    """The flags a record's timings earn from what other processes used meanwhile: 'GPU shared' (its
    ``gpu_others_bytes`` above ``SHARED_GPU_BYTES``), 'host busy' (its ``host_others_cores`` above
    ``HOST_BUSY_CORES``). The leaderboard, the latency tables and the claims read them from here."""
    flags = []
    if (record.get("gpu_others_bytes") or 0) > SHARED_GPU_BYTES:
        flags.append("GPU shared")
    if (record.get("host_others_cores") or 0) > HOST_BUSY_CORES:
        flags.append("host busy")
    return flags


def host_others_cores(start: tuple[float, float, float] | None, end: tuple[float, float, float] | None) -> float | None:
    """Mean number of CPU cores that processes outside this one's tree kept busy between two
    :func:`cpu_sample` s. A timing that is bound by launching work from the host (eager decoding, a small
    model's training steps) slows when other processes share the host's cores, even on a GPU of its own:
    above ``HOST_BUSY_CORES`` the report marks such timings 'host busy'. ``None`` when not measurable."""
    if start is None or end is None or end[0] - start[0] < 0.05:
        return None
    return round(max(0.0, (end[1] - start[1]) - (end[2] - start[2])) / (end[0] - start[0]), 2)


NEIGHBOUR_KEYS = ("gpu_others_bytes", "host_others_cores")


def neighbours_since(cpu0: tuple[float, float, float] | None) -> dict[str, float | None]:
    """What other processes use: device memory now (:func:`gpu_others_bytes`) and host CPU since the
    :func:`cpu_sample` ``cpu0`` (:func:`host_others_cores`); ``None`` for what is not measurable."""
    return {"gpu_others_bytes": gpu_others_bytes(), "host_others_cores": host_others_cores(cpu0, cpu_sample())}


def keep_most(record: dict, values: dict) -> None:
    """Keep in ``record`` the most of each neighbour figure seen so far: its own and those in ``values``
    (a ``None`` or missing value changes nothing)."""
    for key in NEIGHBOUR_KEYS:
        value = values.get(key)
        if value is not None:
            record[key] = max(value, record.get(key) or 0)


def host_cpu_state() -> tuple[int | None, float | None]:
    """(the CPU core this process last ran on, that core's clock in MHz) from Linux ``/proc`` and
    ``/sys``; ``None`` for what the platform does not show. Eager decoding of a small model is bound by one
    host thread, and its speed moved by up to 2x between rounds on an otherwise idle H200 host: recorded per
    round, these tell a core migration or a clock change from the method's own cost."""
    core = mhz = None
    try:
        with open("/proc/self/stat") as f:
            core = int(f.read().rsplit(")", 1)[1].split()[36])  # field 39, "processor"
    except (OSError, ValueError, IndexError):
        return None, None
    try:
        with open(f"/sys/devices/system/cpu/cpu{core}/cpufreq/scaling_cur_freq") as f:
            mhz = round(int(f.read()) / 1000, 1)
    except (OSError, ValueError):
        try:
            with open("/proc/cpuinfo") as f:
                blocks = f.read().split("\n\n")
            for block in blocks:
                fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in block.splitlines()
                                                            if ":" in line)}
                if fields.get("processor") == str(core) and "cpu MHz" in fields:
                    mhz = round(float(fields["cpu MHz"]), 1)
                    break
        except (OSError, ValueError):
            pass
    return core, mhz


@contextlib.contextmanager
def watch_neighbours(record: dict):
    """Keep in ``record`` the most that other processes used while the block ran, over every block watched
    with it: device memory outside this process's allocator (``gpu_others_bytes``, sampled at both ends) and
    host CPU outside this process's tree (``host_others_cores``). The report flags times measured then."""
    keep_most(record, {"gpu_others_bytes": gpu_others_bytes()})
    cpu0 = cpu_sample()
    try:
        yield
    finally:
        keep_most(record, neighbours_since(cpu0))
