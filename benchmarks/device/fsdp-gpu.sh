#!/usr/bin/env bash
# Issue 26's one-GPU checks, in one command, writing under ROOT (default /tmp/pb/results/fsdp-gpu) and packed into
# $OUT/fsdp-gpu.tgz (unpack it into results/):
#   usage (on the GPU machine, after on-device-env.sh and the project's install; no model file needed):
#     bash benchmarks/device/fsdp-gpu.sh [SECONDS]          SECONDS default 300
#   1. loop.json: tiny:llama trained by peftbench.train.distributed_check as one plain process on the GPU
#      (plain.json) and under torchrun as one FSDP2 rank (fsdp1.json), every built-in method; the two loss
#      curves and the trained models' probe logits side by side (max differences)
#   2. peak-*.json: results/estimate/measured/fsdp_one_rank.py under torchrun, one rank, fp32 shards, bf16
#      compute: the measured peaks for `peftbench estimate --fsdp --naive` (results/estimate/README.md), among
#      them shape:llama-3.1-8b full fine-tuning with fp32 master weights and optimizer state
# A step whose JSON exists is kept, so the same command continues; each step has its own timeout.
#   FSDP_STEPS (environment): only these steps, comma-separated (default all): plain,fsdp1,peak-8b-full-ckpt,...
#   ROOT and FSDP_MODELS (environment): a CPU rehearsal, e.g. ROOT=/tmp/fsdp-smoke FSDP_MODELS=tiny bash ... (the
#   peak runs then use shape:smollm2-135m at batch 1 x 64 on gloo: plumbing only)
set -u
secs=${1:-300}
here=$(cd "$(dirname "$0")/../.." && pwd)
root=${ROOT:-/tmp/pb/results/fsdp-gpu}; mkdir -p "$root"
start=$(date +%s); end=$(( start + secs ))
say() { echo "[fsdp-gpu $(( $(date +%s) - start )) s] $*" | tee -a "$root/log.txt"; }
trun=(python3 -m torch.distributed.run --standalone --nproc-per-node 1)

step() {  # NAME CAP CMD...: CMD writes NAME.json (its stdout, unless it writes the file itself); kept when done
  local name=$1 cap=$2; shift 2
  if [ -f "$root/$name.json" ]; then say "$name: kept"; return; fi
  case ,${FSDP_STEPS:-$name}, in *,"$name",*) ;; *) say "$name: not in FSDP_STEPS"; return ;; esac
  local left=$(( end - $(date +%s) - 15 ))
  if [ "$left" -lt 30 ]; then say "$name: not started (${left} s left)"; return; fi
  [ "$left" -lt "$cap" ] && cap=$left
  local t0=$(date +%s) rc
  timeout -s INT -k 10 "$cap" "$@" > "$root/$name.out" 2> "$root/$name.err"
  rc=$?
  if [ $rc -eq 0 ] && [ ! -f "$root/$name.json" ]; then mv "$root/$name.out" "$root/$name.json"; fi
  say "$name: exit $rc in $(( $(date +%s) - t0 )) s (timeout $cap)"
  [ $rc -eq 0 ] || tail -n 6 "$root/$name.err"
}

# 1. the loop: one plain process against one FSDP2 rank, the same runs
runs=(full lora adapter qlora lora:ckpt)
step plain 150 python3 -m peftbench.train.distributed_check "$root/plain.json" "${runs[@]}"
step fsdp1 150 "${trun[@]}" -m peftbench.train.distributed_check "$root/fsdp1.json" "${runs[@]}"
if [ -f "$root/plain.json" ] && [ -f "$root/fsdp1.json" ] && [ ! -f "$root/loop.json" ]; then
  python3 - "$root" <<'EOF'
import json, sys
from pathlib import Path
root = Path(sys.argv[1])
plain, fsdp = (json.loads((root / f"{n}.json").read_text()) for n in ("plain", "fsdp1"))
rows = []
for a, b in zip(plain["runs"], fsdp["runs"], strict=True):
    row = {"run": a.get("run"), "ok": [a.get("ok"), b.get("ok")]}
    if a.get("ok") and b.get("ok"):
        row["steps_equal"] = [s for s, _ in a["losses"]] == [s for s, _ in b["losses"]]
        row["tokens_equal"] = a["tokens"] == b["tokens"]
        row["max_loss_diff"] = max(abs(x - y) for (_, x), (_, y) in zip(a["losses"], b["losses"], strict=True))
        row["loss_first_last"] = [a["losses"][0][1], a["losses"][-1][1]]
        row["max_probe_diff"] = max(abs(x - y) for x, y in zip(a["probe"], b["probe"], strict=True))
        row["probe_scale"] = max(abs(x) for x in a["probe"])
        row["shard"] = b.get("shard")
    rows.append(row)
out = {"what": "distributed_check: one plain process vs one FSDP2 rank under torchrun, on the GPU",
       "plain_world": plain["world"], "fsdp_world": fsdp["world"], "runs": rows}
(root / "loop.json").write_text(json.dumps(out, indent=1))
for r in rows:
    print(r["run"], r["ok"], {k: r.get(k) for k in ("max_loss_diff", "max_probe_diff", "tokens_equal")})
EOF
fi

# 2. measured peaks against the estimate (8B full fine-tuning with fp32 master weights first: the headline)
peak() {  # NAME MODEL METHOD BATCH SEQ [ckpt] [offload]
  local name=$1; shift
  step "peak-$name" 200 "${trun[@]}" "$here/results/estimate/measured/fsdp_one_rank.py" "$@"
}
if [ "${FSDP_MODELS:-}" = tiny ]; then
  peak smol-full shape:smollm2-135m full 1 64
  peak smol-full-offload shape:smollm2-135m full 1 64 ckpt offload
else
  peak 8b-full-ckpt shape:llama-3.1-8b full 1 2048 ckpt   # fp32 weights, gradients and AdamW: ~120 GiB
  peak 1b-full shape:llama-3.2-1b full 4 2048
  peak 1b-lora shape:llama-3.2-1b lora 4 2048
  peak 1b-full-ckpt shape:llama-3.2-1b full 4 2048 ckpt
  peak 1b-full-ckpt-offload shape:llama-3.2-1b full 4 2048 ckpt offload
  peak 8b-lora shape:llama-3.1-8b lora 2 2048
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$root/gpu.txt" 2>/dev/null
free -g > "$root/host-memory.txt" 2>/dev/null
say "done"
if [ -n "${OUT:-}" ]; then tar czf "$OUT/fsdp-gpu.tgz" -C "$(dirname "$root")" "$(basename "$root")"; fi
