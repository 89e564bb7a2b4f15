#!/usr/bin/env bash
# Two benchmark commands side by side, one per GPU of a two-GPU machine (device kind nvidia-h200-x2), then
# everything under /tmp/pb/results packed into $OUT once (the children run without OUT, so they don't pack).
# Each command sees only its own GPU (CUDA_VISIBLE_DEVICES); they share the host's CPU cores (32 on that
# machine), which the results' notes say. Logs append to /tmp/pb/results/gpu0.log and gpu1.log.
#   usage (on the GPU machine, after on-device-env.sh):
#     bash benchmarks/device/two-gpus.sh "COMMAND FOR GPU 0" "COMMAND FOR GPU 1"
set -u
out=${OUT:-}
logs=/tmp/pb/results; mkdir -p "$logs"
run_on() {  # GPU COMMAND
  echo "=== $(date -u +%FT%TZ) on GPU $1: $2" >> "$logs/gpu$1.log"
  ( export CUDA_VISIBLE_DEVICES=$1; unset OUT; bash -c "$2" ) >> "$logs/gpu$1.log" 2>&1
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
[ -n "$out" ] && tar czf "$out/results.tgz" -C /tmp/pb results
exit 0
