#!/usr/bin/env bash
# Remake every file of results/estimate from the repository root: `bash results/estimate/make.sh` (a second;
# nothing is measured). tests/test_estimate.py checks the committed files are what this writes.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=results/estimate
grid=(--model shape:llama-3.1-8b,shape:llama-3.1-70b --methods full,lora,qlora --gpus 1,8 --gpu-memory 80GiB)
for variant in "" -ckpt -bf16; do
  case $variant in -ckpt) extra=(--activation-checkpointing) ;; -bf16) extra=(--master-weights bf16) ;; *) extra=() ;; esac
  peftbench estimate "${grid[@]}" "${extra[@]}" --json > "$out/llama-3.1$variant.json"
  peftbench estimate "${grid[@]}" "${extra[@]}" --format markdown > "$out/llama-3.1$variant.md"
done
measured=(results/throughput-gpu/*.json results/reference/8b-shape/throughput*.json "$out"/measured/*.json
          results/fsdp-gpu/peak-*.json)
peftbench estimate --check "${measured[@]}" --json > "$out/check.json"
peftbench estimate --check "${measured[@]}" --format markdown > "$out/check.md"
peftbench estimate --claims --json > "$out/claims.json"
peftbench estimate --claims --format markdown > "$out/claims.md"
