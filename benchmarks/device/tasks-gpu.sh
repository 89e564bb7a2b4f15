#!/usr/bin/env bash
# Issue 3's GPU sessions: SmolLM2-135M-Instruct fine-tuned on sst2, boolq and arc_easy with lora, adapter and
# full (plus qlora on sst2), scored on each task's test split and on piqa/winogrande for retention.
# One peftbench session per task, run side by side on the one GPU (at this model size the loop is
# launch-bound, so three processes use the GPU far better than one); each is resumable, so the same command
# again continues where the per-command time limit stopped it.
#   usage (on the GPU machine, after on-device-env.sh, data unpacked in /tmp/pb/data):
#     bash benchmarks/device/tasks-gpu.sh SECONDS
set -u
secs=${1:-540}
here=$(dirname "$0")
common=(--data-dir /tmp/pb/data --device cuda --set latency_rounds=0 --retention piqa,winogrande)
bash "$here/session.sh" tasks-gpu-sst2 "$secs" --tasks sst2 --methods lora,qlora,adapter,full "${common[@]}" &
bash "$here/session.sh" tasks-gpu-boolq "$secs" --tasks boolq --methods lora,adapter,full "${common[@]}" &
bash "$here/session.sh" tasks-gpu-arc_easy "$secs" --tasks arc_easy --methods lora,adapter,full "${common[@]}" &
wait
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>/dev/null | tail -1
