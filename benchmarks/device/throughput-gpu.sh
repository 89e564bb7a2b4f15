#!/usr/bin/env bash
# Issue 7's GPU measurements: benchmarks/train_throughput.py in the settings of the issue's targets, each a
# separate process writing its JSON (and its printed table) under /tmp/pb/results/throughput/, skipped when
# its JSON is already there, so the same command again continues after a per-command time limit.
#   usage (on the GPU machine, after on-device-env.sh; data unpacked in /tmp/pb/data for the real-data runs):
#     bash benchmarks/device/throughput-gpu.sh SECONDS NAME[,NAME...]
#   names:
#     smol      shape:smollm2-135m, random tokens, bs16 x 512, full/lora/qlora/adapter, naive vs fast
#     sst2      SmolLM2-135M-Instruct ($PEFTBENCH_GGUF) on sst2's real examples, bs16, 70 steps: loss curves
#     sst2-fp32 the same with fp32 weights (bf16 autocast), as peftbench run trains
#     smol-qa   smol for qlora and adapter only (ablate has full and lora)
#     sst2-lf   sst2 for lora and full, 50 steps (the loss-curve check in the device time left)
#     varlen    shape:smollm2-135m, random rows of 64..512 tokens, bs16: what padding-free batches buy
#     ablate    shape:smollm2-135m, bs16 x 512, full and lora: each optimisation alone, and fast with CUDA graphs
#     ablate-sst2  the same on sst2's real examples (where padding-free batches matter)
#     1b        shape:llama-3.2-1b, full fine-tuning, bs8 x 2048: MFU
#     8b-ckpt   shape:llama-3.1-8b, lora and full, bs2 x 2048, activation checkpointing
#     8b        the same without activation checkpointing (full fine-tuning may not fit: recorded as oom)
#     8b-all, 8b-all-ckpt  issue 8's cost rows: all four methods, fast loop, artifact size, without/with checkpointing
#     8b-h100, 8b-h100-ckpt  the same with allocations capped at 79 GiB: which settings fit an 80 GB H100
#     loss      benchmarks/loss_speed.py: the chunked loss alone vs the plain one (trainable and frozen head)
#     8b-latency  peftbench latency on shape:llama-3.1-8b, static regime, batch 1/8 x prompt 128/1024
set -u
secs=$1; names=$2
here=$(cd "$(dirname "$0")/../.." && pwd)
root=/tmp/pb/results/throughput; mkdir -p "$root"
end=$(( $(date +%s) + secs ))
tp() {  # NAME ARGS...: one benchmark process within the time left
  local name=$1; shift
  [ -f "$root/$name.json" ] && { echo "$name: kept"; return; }
  local left=$(( end - $(date +%s) ))
  [ "$left" -lt 40 ] && { echo "$name: no time left"; return; }
  timeout -s INT -k 15 "$left" python3 "$here/benchmarks/train_throughput.py" --json "$root/$name.partial.json" "$@" \
    > "$root/$name.txt" 2> "$root/$name.err"
  local rc=$?
  [ $rc -eq 0 ] && mv "$root/$name.partial.json" "$root/$name.json"
  echo "== $name (exit $rc, $(( $(date +%s) - end + secs )) s into the command)"; tail -n 14 "$root/$name.txt"
  [ $rc -ne 0 ] && tail -n 5 "$root/$name.err"
}
for n in ${names//,/ }; do
  case $n in
    smol) tp smol --model shape:smollm2-135m --methods full,lora,qlora,adapter --batch-size 16 --seq-len 512 \
            --variants naive,fast --warmup 5 --steps 20 ;;
    sst2) tp sst2 --model "$PEFTBENCH_GGUF" --task sst2 --data-dir /tmp/pb/data --methods full,lora,qlora,adapter \
            --batch-size 16 --seq-len 512 --variants naive,fast --warmup 20 --steps 50 ;;
    sst2-fp32) tp sst2-fp32 --model "$PEFTBENCH_GGUF" --task sst2 --data-dir /tmp/pb/data --weights-dtype fp32 \
            --methods full,lora,qlora,adapter --batch-size 16 --seq-len 512 --variants naive,fast --warmup 20 --steps 50 ;;
    smol-qa) tp smol-qa --model shape:smollm2-135m --methods qlora,adapter --batch-size 16 --seq-len 512 \
            --variants naive,fast,fast-graphs --warmup 5 --steps 20 ;;
    sst2-lf) tp sst2-lf --model "$PEFTBENCH_GGUF" --task sst2 --data-dir /tmp/pb/data --methods lora,full \
            --batch-size 16 --seq-len 512 --variants naive,fast --warmup 5 --steps 45 ;;
    varlen) tp varlen --model shape:smollm2-135m --methods full,lora --batch-size 16 --lengths 64-512 \
              --variants naive,padding_free,fast --warmup 5 --steps 20 ;;
    ablate) tp ablate --model shape:smollm2-135m --methods full,lora --batch-size 16 --seq-len 512 \
              --variants naive,chunked_loss,padding_free,compile,fast-nocompile,fast,fast-graphs --warmup 5 --steps 20 ;;
    ablate-sst2) tp ablate-sst2 --model "$PEFTBENCH_GGUF" --task sst2 --data-dir /tmp/pb/data --methods full,lora \
              --batch-size 16 --seq-len 512 --variants naive,chunked_loss,padding_free,compile,fast-nocompile,fast \
              --warmup 5 --steps 20 ;;
    1b) tp 1b --model shape:llama-3.2-1b --methods full --batch-size 8 --seq-len 2048 --variants naive,fast \
          --warmup 4 --steps 12 ;;
    8b-ckpt) tp 8b-ckpt --model shape:llama-3.1-8b --methods lora,full --batch-size 2 --seq-len 2048 \
               --gradient-checkpointing --variants naive,fast --warmup 3 --steps 8 ;;
    8b) tp 8b --model shape:llama-3.1-8b --methods lora,full --batch-size 2 --seq-len 2048 \
          --variants naive,fast --warmup 3 --steps 8 ;;
    8b-all) tp 8b-all --model shape:llama-3.1-8b --methods lora,qlora,adapter,full --batch-size 2 --seq-len 2048 \
              --variants fast --warmup 3 --steps 8 --artifact ;;
    8b-all-ckpt) tp 8b-all-ckpt --model shape:llama-3.1-8b --methods lora,qlora,adapter,full --batch-size 2 \
              --seq-len 2048 --gradient-checkpointing --variants fast --warmup 3 --steps 8 --artifact ;;
    8b-h100|8b-h100-ckpt)  # issue 8's "which settings fit one 80 GB GPU": the cost rows with allocations capped
              ckpt=(); [ "$n" = 8b-h100-ckpt ] && ckpt=(--gradient-checkpointing)
              tp "$n" --model shape:llama-3.1-8b --methods lora,qlora,adapter,full --batch-size 2 --seq-len 2048 \
                "${ckpt[@]}" --variants fast --warmup 3 --steps 8 --memory-limit-gib 79 ;;
    8b-latency) # continue the committed session (all four methods timed by 2026-11-30: kept) rather than redo it
              if [ ! -d "$root/8b-latency" ] && [ -d "$here/results/reference/8b-shape/latency" ]; then
                mkdir -p "$root/8b-latency"
                cp -r "$here/results/reference/8b-shape/latency" "$here/results/reference/8b-shape/session.json" \
                  "$root/8b-latency/"
              fi
              grep -q '"status": "finished"' "$root/8b-latency/session.json" 2>/dev/null && { echo "8b-latency: kept"; continue; }
              [ $(( end - $(date +%s) )) -lt 40 ] && { echo "8b-latency: no time left"; continue; }
              timeout -s INT -k 15 $(( end - $(date +%s) )) python3 -m peftbench.cli latency --model shape:llama-3.1-8b \
                --methods lora,qlora,adapter,full --batch-sizes 1,8 --prompt-lengths 128,1024 --new-tokens 64 \
                --regimes static --stack none --rounds 5 --output "$root/8b-latency" --resume > "$root/8b-latency.log" 2>&1
              echo "== 8b-latency (exit $?)"; tail -n 20 "$root/8b-latency.log" ;;
    loss) for frozen in "" --frozen-head; do python3 "$here/benchmarks/loss_speed.py" --device cuda --fused $frozen; done \
            | tee "$root/loss-speed.txt" ;;
    *) echo "unknown run $n" ;;
  esac
done
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
if [ -n "${OUT:-}" ]; then
  tar czf "$OUT/throughput.tgz" -C /tmp/pb/results throughput
fi
