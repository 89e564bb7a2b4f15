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
