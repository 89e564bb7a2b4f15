#!/usr/bin/env bash
# Print the CPUs local to GPU N (its NUMA node, from sysfs via the GPU's PCI bus id), as a taskset list, or
# nothing when unknown. A process launching kernels from CPUs on the other socket reaches its GPU across the
# socket link.
#   usage: bash benchmarks/device/gpu-cpus.sh N
set -u
bus=$(nvidia-smi --query-gpu=pci.bus_id --format=csv,noheader -i "${1:-0}" 2>/dev/null | head -1 | tr 'A-Z' 'a-z')
[ -z "$bus" ] && exit 0
bus=${bus#0000}                       # nvidia-smi prints an 8-digit domain, sysfs a 4-digit one
f=/sys/bus/pci/devices/${bus: -12}/local_cpulist
[ -r "$f" ] && cat "$f"
exit 0
