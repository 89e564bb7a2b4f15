#!/usr/bin/env bash
# Issue 22's GPU targets in one command: each part a separate process with its own timeout, inside SECONDS in all,
# writing under /tmp/pb/results/speed-gpu/ and packed into $OUT/speed-gpu.tgz (unpack it into results/).
#   usage (on the GPU machine, after on-device-env.sh, the data unpacked in /tmp/pb/data, the project installed):
#     bash benchmarks/device/speed-gpu.sh [SECONDS [PARTS]]      SECONDS default 560; PARTS default: all, in order
#   parts (run in the order given; one that finished before is kept, so the same command again continues):
#     main        (c) the main job, timed from the shell: peftbench run --methods lora,adapter,full --tasks sst2
#                 --seeds 0, default budget, the GGUF already converted (cached) by a separate step first
#                 (prime.txt); main.json: wall seconds, exit, each cell's timings. A run cut off by its timeout is
#                 moved aside (main.cut-N) and starts afresh next time: a resumed session's wall time means nothing
#     1b          (b) shape:llama-3.2-1b, random tokens, bs8 x 2048, lora and full: naive, Trainer + peft, fast
#                 (MFU in the JSON and table)
#     sst2-M      (a) method M (lora, full, adapter, qlora) on sst2's real examples, bs16, the real GGUF model: naive,
#                 Trainer + peft, fast+buckets+graphs, fast+buckets, fast (dynamic-shape compile: the slowest to start, last; one process per method: its ratios are
#                 side by side; a method cut off keeps the variants it finished in sst2-M.partial.json)
# A part starts only when the time left holds its expected length (guesses for one H200, below; a part cut off
# part-way would be run again whole), and then runs until its cap or the end of SECONDS: what does not fit is
# left, and the last line names the parts for the next command (the same command continues on a warm machine).
#   SMOKE=1: a CPU rehearsal of every part with tiny:llama at tiny sizes, the data in PEFTBENCH_DATA_DIR (default
#   ../shared/data), written to SPEED_ROOT (default /tmp/pb/smoke/speed-gpu): the plumbing, no timings to read
set -u
secs=${1:-560}
parts=${2:-main,1b,sst2-lora,sst2-full,sst2-adapter,sst2-qlora}
here=$(cd "$(dirname "$0")/../.." && pwd)
if [ -n "${SMOKE:-}" ]; then
  root=${SPEED_ROOT:-/tmp/pb/smoke/speed-gpu}; data=${PEFTBENCH_DATA_DIR:-$here/../shared/data}
  tokens=$root.sst2-data.json
  real=tiny:llama; big=tiny:llama
  tiny=(--device cpu --warmup 1 --steps 3 --batch-size 4 --seq-len 48)        # last on the line: these win
  tiny_main=(--device cpu --set steps=3 --limit 8 --retention none --no-base)
else
  root=/tmp/pb/results/speed-gpu; data=/tmp/pb/data
  tokens=/tmp/pb/speed-sst2-data.json  # sst2 tokenized once for the four sst2-* processes (outside the results)
  real=${PEFTBENCH_GGUF:-}; big=shape:llama-3.2-1b; tiny=(); tiny_main=()
fi
mkdir -p "$root"
start=$(date +%s); end=$(( start + secs ))
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}  # Trainer would use DataParallel over several GPUs
say() { echo "[speed-gpu $(( $(date +%s) - start )) s] $*" | tee -a "$root/log.txt"; }
# expected seconds (process start, data, model loads, compilation, the steps) and caps; SMOKE: any time will do
expect() { [ -n "${SMOKE:-}" ] && { echo 30; return; }
           case $1 in main) echo 150 ;; 1b) echo 80 ;; sst2-lora) echo 150 ;; sst2-qlora) echo 170 ;; *) echo 110 ;; esac; }
cap() { case $1 in main) echo 240 ;; 1b) echo 120 ;; *) echo 200 ;; esac; }
done_part() {  # NAME: finished in an earlier command
  case $1 in
    main) grep -q '"finished": true' "$root/main.json" 2>/dev/null ;;
    *) [ -f "$root/$1.json" ] ;;
  esac
}
budget() {  # NAME: its timeout (its cap, or the time left), or 0 when the time left is shorter than it needs
  local left=$(( end - $(date +%s) - 25 )) c  # 25: a timeout's grace before the kill, and the packing
  c=$(cap "$1")
  if [ "$left" -lt "$(expect "$1")" ]; then echo 0; elif [ "$left" -lt "$c" ]; then echo "$left"; else echo "$c"; fi
}
seconds_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
[ -n "$real" ] || say "PEFTBENCH_GGUF is not set (source .devcarry/bin/on-device-env.sh): main and sst2-* will fail"

# the GGUF converted to safetensors once, untimed by the parts (the issue times the main job with the model cached)
if [ ! -f "$root/prime.txt" ] && [ -n "$real" ]; then
  t0=$(date +%s.%N)
  if python3 -c "from peftbench.models.sources import resolve_model; import sys; resolve_model(sys.argv[1])" \
      "$real" > "$root/prime.log" 2>&1; then
    echo "gguf converted and cached in $(seconds_since "$t0") s" > "$root/prime.txt"; say "$(cat "$root/prime.txt")"
  else
    say "gguf conversion failed after $(seconds_since "$t0") s:"; tail -n 5 "$root/prime.log"
  fi
fi

tp() {  # NAME TIMEOUT ARGS...: one train_throughput.py process
  local name=$1 t=$2; shift 2
  timeout -s INT -k 15 "$t" python3 "$here/benchmarks/train_throughput.py" --json "$root/$name.partial.json" "$@" \
    > "$root/$name.txt" 2> "$root/$name.err"
  local rc=$? n=1
  say "$name: exit $rc (timeout $t s)"; tail -n 12 "$root/$name.txt"
  if [ $rc -eq 0 ]; then
    mv "$root/$name.partial.json" "$root/$name.json"
  else  # kept as NAME.cut-N.*: the variants it finished, beside the next try
    tail -n 5 "$root/$name.err"
    while [ -e "$root/$name.cut-$n.txt" ]; do n=$(( n + 1 )); done
    for ext in partial.json txt err; do [ -f "$root/$name.$ext" ] && mv "$root/$name.$ext" "$root/$name.cut-$n.$ext"; done
  fi
  return 0
}

main_job() {  # TIMEOUT
  local t=$1 n=1
  if [ -d "$root/main" ]; then
    while [ -e "$root/main.cut-$n" ]; do n=$(( n + 1 )); done
    mv "$root/main" "$root/main.cut-$n"; [ -f "$root/main.json" ] && mv "$root/main.json" "$root/main.cut-$n.json"
  fi
  local cmd=(python3 -m peftbench.cli run --methods lora,adapter,full --tasks sst2 --seeds 0 --model "$real"
             --data-dir "$data" --output "$root/main" "${tiny_main[@]}")
  local t0 t1 rc
  t0=$(date +%s.%N)
  timeout -s INT -k 20 "$t" "${cmd[@]}" > "$root/main.log" 2>&1
  rc=$?; t1=$(date +%s.%N)
  python3 - "$root" "$t0" "$t1" "$rc" "$t" "${cmd[*]}" <<'EOF'
import json, sys
from pathlib import Path
root, t0, t1, rc, limit, cmd = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), \
    int(sys.argv[5]), sys.argv[6]
cells = []
for f in sorted((root / "main" / "runs").glob("*.json")):
    run = json.loads(f.read_text())
    train = run.get("train") or {}
    cells.append({"key": run.get("key"), "status": run.get("status"), "timings_s": run.get("timings"),
                  "train_wall_s": train.get("wall_time_s"), "train_tokens_per_s": train.get("tokens_per_s"),
                  "first_step_s": train.get("first_step_s"), "loop": (train.get("loop") or {}).get("notes")})
out = {"what": "issue 22 (c): the main job's wall time, model cached", "command": cmd, "wall_s": round(t1 - t0, 2),
       "exit": rc, "timeout_s": limit, "finished": rc not in (124, 137),  # 124/137: cut off by the timeout
       "all_ok": rc == 0, "target_s": 120, "cells": cells}
(root / "main.json").write_text(json.dumps(out, indent=1))
print(f"main job: exit {rc}, {t1 - t0:.1f} s (target 120 s); cells: "
      + ", ".join(f"{c['key']} {c['status']} {sum((c['timings_s'] or {}).values()):.0f} s" for c in cells))
EOF
  say "main: exit $rc (timeout $t s)"; tail -n 8 "$root/main.log"
}

left_over=()
for n in ${parts//,/ }; do
  if done_part "$n"; then say "$n: kept"; continue; fi
  t=$(budget "$n")
  if [ "$t" -eq 0 ]; then
    say "$n: not started (expects ~$(expect "$n") s, $(( end - $(date +%s) - 25 )) s usable)"; left_over+=("$n"); continue
  fi
  say "$n: start (timeout $t s)"
  case $n in
    main) main_job "$t" ;;
    1b) tp 1b "$t" --model "$big" --methods lora,full --batch-size 8 --seq-len 2048 \
          --variants naive,trainer+peft,fast --warmup 3 --steps 8 "${tiny[@]}" ;;
    sst2-lora|sst2-full|sst2-adapter|sst2-qlora)
        tp "$n" "$t" --model "$real" --task sst2 --data-dir "$data" --methods "${n#sst2-}" \
          --batch-size 16 --seq-len 512 --variants naive,trainer+peft,fast+buckets+graphs,fast+buckets,fast \
          --warmup 10 --steps 30 --data-cache "$tokens" "${tiny[@]}" ;;
    *) say "unknown part $n (parts: main, 1b, sst2-lora, sst2-full, sst2-adapter, sst2-qlora)" ;;
  esac
  done_part "$n" || left_over+=("$n")
done
if [ ${#left_over[@]} -gt 0 ]; then
  parts_left=$(IFS=,; echo "${left_over[*]}")
  say "left for the next command: bash benchmarks/device/speed-gpu.sh 560 $parts_left"
else
  say "every part done: $parts"
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader > "$root/gpu.txt" 2>/dev/null
say "done: $(cat "$root/gpu.txt" 2>/dev/null)"
if [ -n "${OUT:-}" ]; then
  tar czf "$OUT/speed-gpu.tgz" --exclude "*/lm_eval_tasks" -C "$(dirname "$root")" "$(basename "$root")"
fi
