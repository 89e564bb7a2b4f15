#!/usr/bin/env bash
# Issue 8's quality-and-cost sessions on SmolLM2-135M-Instruct: lora, qlora, adapter (series) and full on
# sst2, boolq, arc_easy and openbookqa, 3 seeds each, the same budget for every method (each task's default
# steps), retention on piqa and winogrande, the zero-shot base row, latency (one shape, both regimes) and
# merge fidelity in every cell. One resumable session per task under results/reference/<task> (copied back
# through $OUT), run side by side on the one GPU (a 135M model leaves it mostly idle); the same command
# again continues where the per-command limit stopped it (--resume re-runs only cells that are not ok).
#   usage (on the GPU machine, after on-device-env.sh, data unpacked in /tmp/pb/data):
#     bash benchmarks/device/reference-gpu.sh SECONDS [TASKS]   # TASKS default: sst2,boolq,arc_easy,openbookqa
# Plan: 4 tasks x 3 seeds x 4 methods = 48 cells of ~1-3 min each: several commands, likely two sessions.
set -u
secs=${1:-540}; tasks=${2:-sst2,boolq,arc_easy,openbookqa}
here=$(dirname "$0")
common=(--methods lora,qlora,adapter,full --seeds 0,1,2 --data-dir /tmp/pb/data --device cuda
        --retention piqa,winogrande --set latency_regimes=eager,static --set latency_rounds=5)
for t in ${tasks//,/ }; do
  bash "$here/session.sh" "reference-$t" "$secs" --tasks "$t" "${common[@]}" &
done
wait
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>/dev/null | tail -1
