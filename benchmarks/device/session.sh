#!/usr/bin/env bash
# Run (or continue) one peftbench session on the GPU machine inside its per-command time limit, then pack
# the session folder into $OUT. Cells that finish are written as they finish; a cell that would not finish
# in the time left (by how long that method's cells took) is not started, and a shorter one may be
# (--time-budget); if the time runs out anyway the session is interrupted (SIGINT: unfinished cells are marked
# cancelled). The next call with the same NAME resumes it (--resume re-runs only what is not ok).
#   usage: [SHARD=K/N] bash benchmarks/device/session.sh NAME SECONDS [peftbench run options...]
#   SHARD: this process runs the K-th of N shares of the session's cells (peftbench run --shard), beside the
#   other shards' processes in the same folder; its log is NAME.shardKofN.log
# Expects on-device-env.sh to have been sourced (model, wheels) and the project importable.
set -u
name=$1; secs=$2; shift 2
root=/tmp/pb/results
out=$root/$name
mkdir -p "$root"
resume=()
[ -f "$out/session.json" ] && resume=(--resume)
log=$root/$name.log; shard=()
if [ -n "${SHARD:-}" ]; then shard=(--shard "$SHARD"); log=$root/$name.shard${SHARD/\//of}.log; fi
start=$(date +%s)
# --time-budget: start no cell that would not finish in time (a cell cut off by the timeout is lost whole: on
# 2026-11-30 about one cell per session and command); the timeout stays as the hard stop
budget=$(( secs > 60 ? secs - 20 : secs ))
timeout -s INT -k 30 "$secs" python3 -m peftbench.cli run --output "$out" "${resume[@]}" "${shard[@]}" \
  --time-budget "$budget" "$@" > "$log" 2>&1
rc=$?
echo "session $name: exit $rc after $(( $(date +%s) - start )) s"
tail -n 60 "$log"
if [ -n "${OUT:-}" ]; then
  tar czf "$OUT/$(basename "$log" .log).tgz" --exclude "$name/lm_eval_tasks" -C "$root" "$name" "$(basename "$log")"
fi
