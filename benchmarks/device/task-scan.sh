#!/usr/bin/env bash
# Which tasks can separate methods on SmolLM2-135M-Instruct (issue 21): the zero-shot base row, LoRA and full
# fine-tuning, one seed, each task's default GPU budget, no retention, latency or merge studies, scored on the
# whole test split. A task is worth a verdict only when a method's CI clears its chance and majority-class
# baselines (`peftbench report` marks the others uninformative). One session per task, all side by side on
# the one GPU (quality does not depend on sharing; every cell is marked "GPU shared", and no cost from here
# decides anything), each resumable with the same command.
#   usage (on the GPU machine, after on-device-env.sh, data unpacked in /tmp/pb/data):
#     bash benchmarks/device/task-scan.sh SECONDS [TASKS] [METHODS]
#   TASKS default: emotion,ag_news,rte,sst2,arc_easy; METHODS default: lora,full
set -u
secs=${1:-540}; tasks=${2:-emotion,ag_news,rte,sst2,arc_easy}; methods=${3:-lora,full}
here=$(dirname "$0")
for t in ${tasks//,/ }; do
  bash "$here/session.sh" "task-scan-$t" "$secs" --tasks "$t" --methods "$methods" --seeds 0 \
    --data-dir /tmp/pb/data --device cuda --retention none --set latency_rounds=0 \
    --set merge_eval=false --set merge_precisions=false &
done
wait
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>/dev/null | tail -1
