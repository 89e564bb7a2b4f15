"""Peak memory of a phase: CUDA peak allocated on GPU, peak resident set size (RSS) on CPU."""

from __future__ import annotations

import resource


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
