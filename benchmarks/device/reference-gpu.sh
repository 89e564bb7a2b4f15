#!/usr/bin/env bash
# Issue 8's quality-and-cost sessions on SmolLM2-135M-Instruct: lora, qlora, the series adapter in both placements
# (adapter: Houlsby, after attention and MLP; adapter@pfeiffer: after the MLP only) and full on
# sst2, boolq, arc_easy and openbookqa, 3 seeds each, the same budget for every method (each task's default
# steps), retention on piqa and winogrande, the zero-shot base row, latency (one shape, both regimes) and
# merge fidelity in every cell. One resumable session per task under results/reference/<task> (copied back
# through $OUT); the same command again continues where the per-command limit stopped it (--resume re-runs
# only cells that are not ok). On a fresh machine it first copies the committed results/reference/<task> into
# place, so work done in earlier sessions is kept (commit each session's tarball there as it comes back).
#   usage (on the GPU machine, after on-device-env.sh, data unpacked in /tmp/pb/data):
#     bash benchmarks/device/reference-gpu.sh SECONDS [TASKS] [PARALLEL]
#   TASKS default: sst2,arc_easy,emotion,ag_news,rte: the tasks that separate methods from their chance and
#     majority baselines on this model (results/task-scan-gpu/README.md). The first edition's boolq (asked
#     without its passage) and openbookqa do not (every method within a point of the majority class / chance),
#     so they decide no claim; pass them explicitly to continue that edition. TASK:K/N runs only the K-th of N shards of that task's
#     session (peftbench run --shard), so a long task can run as N processes, e.g. arc_easy:1/2 on one GPU
#     and arc_easy:2/2 on the other, filling the same folder
#   PARALLEL: 1 (default) runs the task sessions one after another, so every cell has the GPU to itself and
#     its time, tokens/s and latency are its own; N > 1 runs them side by side (a 135M model leaves the GPU
#     mostly idle, so quality comes N times sooner), and every cell is then marked "GPU shared" in the
#     reports (peftbench samples the device memory other processes hold at every phase).
# Plan: 4 tasks x 3 seeds x 5 methods = 60 cells of ~1-3 min each: several commands, likely several sessions.
set -u
secs=${1:-540}; tasks=${2:-sst2,arc_easy,emotion,ag_news,rte}; parallel=${3:-1}
end=$(( $(date +%s) + secs ))
here=$(dirname "$0")
common=(--methods lora,qlora,adapter,adapter@pfeiffer,full --set adapter@pfeiffer.placement=pfeiffer
        --seeds 0,1,2 --data-dir /tmp/pb/data --device cuda
        --retention piqa,winogrande --set latency_regimes=eager,static --set latency_rounds=5)
# a fresh machine continues the committed sessions (results/reference/<task>, copied back from earlier commands)
# instead of starting them again
repo=$(cd "$here/../.." && pwd)
for entry in ${tasks//,/ }; do
  t=${entry%%:*}
  if [ ! -d "/tmp/pb/results/reference-$t" ] && [ -f "$repo/results/reference/$t/session.json" ]; then
    # copied aside, then moved into place in one step: the other GPU's shard of the same task may be here too
    mkdir -p /tmp/pb/results && tmp=$(mktemp -d /tmp/pb/results/.seed-XXXXXX) && cp -r "$repo/results/reference/$t" "$tmp/s" \
      && { mv -T "$tmp/s" "/tmp/pb/results/reference-$t" 2>/dev/null \
           && echo "reference-$t: continuing the committed session ($(ls "/tmp/pb/results/reference-$t/runs" | wc -l) run files)"; }
    rm -rf "$tmp"
  fi
done
one() {  # ENTRY SECONDS: one task's session, or one shard of it
  local t=${1%%:*} shard=
  [ "$t" != "$1" ] && shard=${1#*:}
  SHARD=$shard bash "$here/session.sh" "reference-$t" "$2" --tasks "$t" "${common[@]}"
}
if [ "$parallel" -le 1 ]; then
  for entry in ${tasks//,/ }; do
    left=$(( end - $(date +%s) ))
    [ "$left" -lt 90 ] && { echo "reference-$entry: no time left"; continue; }
    one "$entry" "$left"
  done
else
  running=0
  for entry in ${tasks//,/ }; do
    one "$entry" "$secs" &
    running=$((running + 1))
    if [ "$running" -ge "$parallel" ]; then wait -n; running=$((running - 1)); fi
  done
  wait
fi
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>/dev/null | tail -1
