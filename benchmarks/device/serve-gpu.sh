#!/usr/bin/env bash
# Issue 25's GPU measurements: `peftbench serve-bench` (one base model serving K adapters at once, rows of a
# batch asking for different adapters) on SmolLM2-135M-Instruct and on shape:llama-3.1-8b (random init),
# K = 1,2,4,8,16,32 adapters (random-initialised), batch 1, 8, 32, prompt 128, eager regime, bf16.
#   usage (on the GPU machine, after on-device-env.sh and the project's install):
#     bash benchmarks/device/serve-gpu.sh SECONDS [ROUNDS] [NEW]
#   ROUNDS timed rounds (default 5) of NEW new tokens (default 8: PEFT's per-row path costs ~10 ms per token
#   and adapter in eager decoding, so batch 32 x K 32 decodes at about 0.4 s a token).
# Four steps, LoRA on both models first, each continued with --resume (finished methods and batch sizes
# are kept; a step cut off by the time limit loses only the batch size it was timing):
#   1. SmolLM2 lora (until 40 % of SECONDS)  2. 8B lora (until 80 %)
#   3. SmolLM2 qlora, adapter, full          4. 8B qlora, adapter, full   (adapter/full: listed unsupported)
# Run the same command again to finish what did not fit. SmolLM2 needs PEFTBENCH_GGUF (on-device-env.sh);
# without it step 1 and 3 fail and the 8B steps still run.
#   PIN (environment): 1 (default) pins to the CPUs of the GPU's NUMA node (eager decoding is host-bound).
#   MODELS (environment): which of the two to run, in order (default smol,8b; e.g. 8b alone where the GGUF is
#   not staged yet: LoRA until 80 % of SECONDS, then the rest).
#   FROM (environment): where a fresh machine finds the sweeps to continue (default results/serve-gpu).
#   SMALL, LARGE, SERVE_ARGS, ROOT (environment): the two models, extra serve-bench flags and the results
#   folder, for a dry run elsewhere (e.g. SMALL=tiny:llama LARGE=tiny:llama SERVE_ARGS="--adapters 1,2").
# Output: $OUT/serve-gpu.tgz holding serve-smol/ and serve-8b/ (results folders), their logs and tables.
set -u
secs=$1; rounds=${2:-5}; new=${3:-8}
small=${SMALL:-HuggingFaceTB/SmolLM2-135M-Instruct}; large=${LARGE:-shape:llama-3.1-8b}
read -r -a extra <<< "${SERVE_ARGS:-}"
pin=()
if [ "${PIN:-1}" != 0 ] && command -v taskset > /dev/null; then
  cpus=$(bash "$(dirname "$0")/gpu-cpus.sh" "${CUDA_VISIBLE_DEVICES:-0}")
  [ -n "$cpus" ] && pin=(taskset -c "$cpus")
fi
echo "serve-gpu.sh: ${pin[*]:-not pinned}; rounds $rounds, new tokens $new"
root=${ROOT:-/tmp/pb/results}; mkdir -p "$root"; from=${FROM:-results/serve-gpu}
start=$(date +%s); end=$(( start + secs ))
step() {  # step NAME MODEL METHODS UNTIL_FRACTION
  local name=$1 model=$2 methods=$3 until=$(( start + secs * $4 / 100 ))
  [ "$until" -gt "$end" ] && until=$end
  local left=$(( until - $(date +%s) ))
  if [ "$left" -lt 40 ]; then echo "$name ($methods): skipped, ${left} s left"; return; fi
  local resume=()
  # a fresh machine continues the committed partial sweep (FROM, default results/serve-gpu)
  [ ! -e "$root/$name" ] && [ -f "$from/$name/session.json" ] && cp -r "$from/$name" "$root/$name"
  [ -f "$root/$name/session.json" ] && resume=(--resume)
  timeout -s INT -k 20 "$left" "${pin[@]}" python3 -m peftbench.cli serve-bench --model "$model" \
    --methods "$methods" --rounds "$rounds" --new-tokens "$new" --output "$root/$name" "${resume[@]}" \
    "${extra[@]}" --format markdown > "$root/$name.md" 2>> "$root/$name.log"
  echo "$name ($methods): exit $? after $(( $(date +%s) - start )) s; files: $(ls "$root/$name/latency" "$root/$name/serving-partial" 2>/dev/null | tr '\n' ' ')"
}
runs=()  # NAME:MODEL (a shape: model keeps its own colon)
IFS=, read -r -a chosen <<< "${MODELS:-smol,8b}"
for m in "${chosen[@]}"; do
  case $m in
    smol) runs+=("serve-smol:$small") ;;
    8b) runs+=("serve-8b:$large") ;;
    *) echo "serve-gpu.sh: MODELS takes smol and 8b, comma-separated, not '$m'" >&2; exit 2 ;;
  esac
done
i=0
for r in "${runs[@]}"; do i=$(( i + 1 )); step "${r%%:*}" "${r#*:}" lora $(( 80 * i / ${#runs[@]} )); done
for r in "${runs[@]}"; do step "${r%%:*}" "${r#*:}" lora,qlora,adapter,full 100; done
tail -n 4 "$root"/serve-*.log 2>/dev/null | tail -n 16
if [ -n "${OUT:-}" ]; then
  tar czf "$OUT/serve-gpu.tgz" -C "$root" $(cd "$root" && ls -d serve-smol* serve-8b* 2>/dev/null)
fi
