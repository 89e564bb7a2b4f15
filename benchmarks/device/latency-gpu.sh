#!/usr/bin/env bash
# Issue 4's GPU measurements, resumable within the per-command time limit:
#   1. the one-shape benchmark: `peftbench latency` for lora, 1 shape (batch 1, prompt 128, 64 new tokens),
#      3 modes (base, unmerged, merged), eager regime, 5 rounds -- wall time printed, model load included;
#   2. the full grid (batch 1,8,32 x prompt 128,1024 x 64 new tokens; eager and static regimes; base,
#      unmerged, merged, stack2, stack4) for lora, qlora, adapter and full, twice (runs A and B), to check
#      that every overhead ratio reproduces.
#   usage (on the GPU machine, after on-device-env.sh):
#     bash benchmarks/device/latency-gpu.sh SECONDS [ROUNDS] [NEW] [WHAT] [REGIMES]
#   WHAT: all (default), one (the one-shape benchmark only) or grid (the grid runs only);
#   REGIMES: the grid's regimes, default eager,static.
#   LATENCY_RUNS (environment): which grid runs, default "A B"; "A" on one GPU and "B" on the other runs both
#   side by side (benchmarks/device/two-gpus.sh).
# The one-shape benchmark's wall time includes the GGUF conversion when the model cache is cold: run it
# after something that loaded the model (its log says whether it converted).
# The committed grid used ROUNDS=3 and NEW=32 new tokens (the command's defaults are 5 and 64): eager decoding
# runs at ~25-45 ms per token on that machine, and the default grid twice would not fit the session's device time.
# With REGIMES=eager, run B continues results/latency-gpu/latency-grid-eager-B (committed; all four methods
# since 2026-11-30, so it keeps them all): a new eager run takes another name in LATENCY_RUNS (e.g. C).
#   PIN (environment): 1 (default) runs peftbench latency pinned (taskset) to the CPUs of the GPU's NUMA node
#   (benchmarks/device/gpu-cpus.sh), so the host-bound eager rounds do not move across sockets; 0 leaves the
#   scheduler free; "one" pins it to a single CPU of that node with one intra-op thread (OMP_NUM_THREADS=1):
#   an experiment on eager decoding's 2x swings between rounds on an idle host (each round now records the core
#   it ran on and its clock: latency.regimes.*.modes.*.host). The log says which.
set -u
secs=$1; rounds=${2:-5}; new=${3:-64}; what=${4:-all}; regimes=${5:-eager,static}
pin=()
if [ "${PIN:-1}" != 0 ] && command -v taskset > /dev/null; then
  cpus=$(bash "$(dirname "$0")/gpu-cpus.sh" "${CUDA_VISIBLE_DEVICES:-0}")
  [ -z "$cpus" ] && cpus=0-$(( $(nproc) - 1 ))
  if [ "${PIN:-1}" = one ]; then   # the node's second CPU (the first often takes the host's interrupts)
    first=${cpus%%[,-]*}; cpus=$(( first + 1 )); export OMP_NUM_THREADS=1
  fi
  pin=(taskset -c "$cpus")
fi
echo "latency-gpu.sh: ${pin[*]:-not pinned}${OMP_NUM_THREADS:+, OMP_NUM_THREADS=$OMP_NUM_THREADS}"
root=/tmp/pb/results; mkdir -p "$root"
end=$(( $(date +%s) + secs ))
if [ "$what" != grid ] && [ ! -f "$root/latency-one-shape/wall.txt" ]; then
  t0=$(date +%s.%N)
  "${pin[@]}" python3 -m peftbench.cli latency --methods lora --batch-sizes 1 --prompt-lengths 128 --new-tokens 64 \
    --regimes eager --stack none --rounds 5 --output "$root/latency-one-shape" > "$root/latency-one-shape.log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  mkdir -p "$root/latency-one-shape"
  echo "peftbench latency, lora, 1 shape x 3 modes (base, unmerged, merged), eager, 5 rounds + 1 warm-up: exit $rc, wall $(python3 -c "print(round($t1 - $t0, 1))") s (process start and model load included)" | tee "$root/latency-one-shape/wall.txt"
fi
# the eager grid's run B took two GPU sessions (QLoRA in the second): a repeat continues the committed one
here=$(cd "$(dirname "$0")/../.." && pwd)
if [ "$regimes" = eager ] && [ ! -d "$root/latency-grid-B" ] && [ -d "$here/results/latency-gpu/latency-grid-eager-B" ]; then
  cp -r "$here/results/latency-gpu/latency-grid-eager-B" "$root/latency-grid-B"
  rm -f "$root/latency-grid-B/run.log"
fi
for run in ${LATENCY_RUNS:-A B}; do
  [ "$what" = one ] && break
  left=$(( end - $(date +%s) ))
  [ "$left" -lt 30 ] && break
  timeout -s INT -k 20 "$left" "${pin[@]}" python3 -m peftbench.cli latency --methods lora,qlora,adapter,full \
    --rounds "$rounds" --new-tokens "$new" --regimes "$regimes" --output "$root/latency-grid-$run" --resume >> "$root/latency-grid-$run.log" 2>&1
  echo "grid $run: exit $? ; files: $(ls "$root/latency-grid-$run/latency" 2>/dev/null | tr '\n' ' ')"
done
tail -n 5 "$root"/latency-grid-*.log 2>/dev/null | grep -v "^$" | tail -n 20
if [ -n "${OUT:-}" ]; then
  tar czf "$OUT/latency-gpu.tgz" -C "$root" $(cd "$root" && ls -d latency-one-shape* latency-grid-* 2>/dev/null)
fi
