#!/usr/bin/env bash
# Two benchmark commands side by side, one per GPU of a two-GPU machine (device kind nvidia-h200-x2), then
# everything under /tmp/pb/results packed into $OUT once (the children run without OUT, so they don't pack).
# Each command sees only its own GPU (CUDA_VISIBLE_DEVICES) and is pinned (taskset) to the CPUs of its GPU's NUMA
# node when the two GPUs sit on different nodes, else to its own half of the cores, with inductor's compile
# workers limited to half the cores. Measured on 2026-11-30 WITHOUT the
# pinning: a neighbour that compiles (inductor starts a worker per core) disturbed host-bound timings on the other
# GPU -- eager decoding at batch 1 read 22-49 ms/token against 20-21 alone, and the latency sanity check flagged
# it. Whether pinning is enough is not measured yet: use two GPUs for GPU-bound work (8B shapes, the static
# latency regime, quality cells), and check host_others_cores / 'host busy' in what comes back.
# Logs append to /tmp/pb/results/gpu0.log and gpu1.log.
#   usage (on the GPU machine, after on-device-env.sh):
#     bash benchmarks/device/two-gpus.sh "COMMAND FOR GPU 0" "COMMAND FOR GPU 1"
set -u
out=${OUT:-}
logs=/tmp/pb/results; mkdir -p "$logs"
n=$(nproc); half=$(( n / 2 ))
here=$(dirname "$0")
local0=$(bash "$here/gpu-cpus.sh" 0); local1=$(bash "$here/gpu-cpus.sh" 1)
run_on() {  # GPU COMMAND
  # each side on its GPU's own NUMA node when the two differ, else on half of the cores
  local cores=$(( $1 * half ))-$(( $1 * half + half - 1 )) pin=()
  if [ -n "$local0" ] && [ -n "$local1" ] && [ "$local0" != "$local1" ]; then
    cores=$local0; [ "$1" = 1 ] && cores=$local1
  fi
  command -v taskset > /dev/null && [ "$half" -gt 0 ] && pin=(taskset -c "$cores")
  echo "=== $(date -u +%FT%TZ) on GPU $1 (cores ${pin:+$cores}): $2" >> "$logs/gpu$1.log"
  ( export CUDA_VISIBLE_DEVICES=$1 TORCHINDUCTOR_COMPILE_THREADS=$(( half > 0 ? half : 1 )); unset OUT
    "${pin[@]}" bash -c "$2" ) >> "$logs/gpu$1.log" 2>&1
}
run_on 0 "$1" & p0=$!
run_on 1 "$2" & p1=$!
wait $p0; r0=$?
wait $p1; r1=$?
for g in 0 1; do
  r=$r0; [ $g = 1 ] && r=$r1
  echo "=== GPU $g (exit $r), log tail:"; tail -n 45 "$logs/gpu$g.log"
done
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader 2>/dev/null
# (lm-eval's materialized task folders hold copies of the data: left out, as session.sh does)
[ -n "$out" ] && tar czf "$out/results.tgz" --exclude "*/lm_eval_tasks" -C /tmp/pb results
exit 0
