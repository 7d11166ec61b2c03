#!/usr/bin/env bash
# Every CUDA path of slimkit, exercised at small sizes in one call (about 3-5 minutes on one GPU;
# under 8 with torch.compile's first compile): run this first whenever a GPU is lent.
#
#   bench/gpu_check.sh [--only CHECK,CHECK] [--out DIR] [--timeout SECONDS] [--list] [--help]
#
# Checks (synthetic data, ResNet-20 at 32 px):
#   cuda            torch sees the GPU; bf16 supported
#   gates-bf16      gate learning on CUDA under bf16 autocast (slimkit prune --method scratch)
#   train-compile   training with AMP (bf16), channels_last and torch.compile
#   nccl            an NCCL all_reduce under torchrun (2 processes with 2+ GPUs, else 1)
#   ddp-train       slimkit train under torchrun on 2 GPUs, NCCL (skipped with one GPU)
#   bench-ort-cuda  slimkit bench --backend ort-cuda (needs onnxruntime-gpu)
#   bench-torch     slimkit bench --backend torch --device cuda
#   latency-budget  slimkit prune mobilenet_v1 --latency 60% timed with --backend torch --device cuda
#
# Prints a table (check, ok/failed/skipped, seconds, throughput, note). Exit codes: 0 all passed
# (skips allowed), 1 a check failed, 2 bad arguments, 3 no CUDA GPU visible (nothing was run).
# Uses the repo's .venv when present (else $SLIMKIT_PYTHON, else python3). Logs stay in --out.
set -uo pipefail

EXIT_FAILED=1
EXIT_USAGE=2
EXIT_NO_GPU=3
CHECKS=(cuda gates-bf16 train-compile nccl ddp-train bench-ort-cuda bench-torch latency-budget)

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }
die_usage() { echo "gpu_check: $1 (see --help)" >&2; exit "$EXIT_USAGE"; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ONLY=""
OUT=""
TIMEOUT=240
ASSUME_GPU=0  # for the CI test of the table and exit code on a machine without a GPU
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --list) printf '%s\n' "${CHECKS[@]}"; exit 0 ;;
    --only) [ $# -ge 2 ] || die_usage "--only needs a comma-separated list of checks"; ONLY=$2; shift 2 ;;
    --only=*) ONLY=${1#--only=}; shift ;;
    --out) [ $# -ge 2 ] || die_usage "--out needs a folder"; OUT=$2; shift 2 ;;
    --out=*) OUT=${1#--out=}; shift ;;
    --timeout) [ $# -ge 2 ] || die_usage "--timeout needs seconds"; TIMEOUT=$2; shift 2 ;;
    --timeout=*) TIMEOUT=${1#--timeout=}; shift ;;
    --assume-gpu) ASSUME_GPU=1; shift ;;
    *) die_usage "unknown argument '$1'" ;;
  esac
done
[[ "$TIMEOUT" =~ ^[1-9][0-9]{0,4}$ ]] || die_usage "--timeout must be a whole number of seconds (1-99999), got '$TIMEOUT'"

SELECTED=("${CHECKS[@]}")
if [ -n "$ONLY" ]; then
  IFS=',' read -r -a SELECTED <<< "$ONLY"
  [ ${#SELECTED[@]} -gt 0 ] || die_usage "--only is empty"
  for c in "${SELECTED[@]}"; do
    [[ " ${CHECKS[*]} " == *" $c "* ]] || die_usage "unknown check '$c': choose from ${CHECKS[*]}"
  done
fi

if [ -n "${SLIMKIT_PYTHON:-}" ]; then PY=$SLIMKIT_PYTHON
elif [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python
else PY=$(command -v python3 || true)
fi
[ -n "$PY" ] && [ -x "$PY" ] || { echo "gpu_check: no python found (make setup creates .venv)" >&2; exit "$EXIT_USAGE"; }

GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null) \
  || { echo "gpu_check: $PY cannot import torch (run make setup)" >&2; exit "$EXIT_USAGE"; }
if [ "$GPUS" = 0 ] && [ "$ASSUME_GPU" = 0 ]; then
  echo "gpu_check: no CUDA GPU visible to $PY (torch.cuda.is_available() is False): nothing checked; run this on a GPU machine"
  exit "$EXIT_NO_GPU"
fi

[ -n "$OUT" ] || OUT=$(mktemp -d "${TMPDIR:-/tmp}/slimkit-gpu-check.XXXXXX")
mkdir -p "$OUT" || die_usage "cannot create --out $OUT"
cd "$ROOT" || exit "$EXIT_USAGE"
export PYTHONUNBUFFERED=1 SLIMKIT_PROGRESS_SECONDS=10
SLIMKIT=("$PY" -m slimkit)
TORCHRUN=("$PY" -m torch.distributed.run --standalone)
NPROC=$(( GPUS >= 2 ? 2 : 1 ))
SMALL=(--data synthetic --device cuda)

# A plan for the checks that need one, made on the CPU (uniform, seconds): no check depends on another.
plan_for_checks() {
  [ -f "$OUT/plan.json" ] || "${SLIMKIT[@]}" prune resnet20 --flops 50% --method uniform --round-to 1 \
    --num-classes 10 --out "$OUT/plan.json" --no-plot >&2
}

# Each check: runs its commands (output to $OUT/NAME.log) and prints its throughput on stdout.
check_cuda() {
  "$PY" - <<'EOF'
import torch
assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
name = torch.cuda.get_device_name(0)
assert torch.cuda.is_bf16_supported(), f"{name} has no bf16 support"
x = torch.randn(2048, 2048, device="cuda")
torch.cuda.synchronize()
import time
t = time.perf_counter()
for _ in range(20):
    y = x @ x
torch.cuda.synchronize()
print(f"{20 * 2 * 2048 ** 3 / (time.perf_counter() - t) / 1e12:.1f} TFLOP/s fp32 ({name})")
EOF
}

# One line of what a check measured, from the JSON it wrote: summarize KIND FILE.
summarize() {
  "$PY" - "$@" <<'EOF'
import json, sys
kind, path = sys.argv[1], sys.argv[2]
d = json.load(open(path))
if kind == "gates":
    s = d["search"]
    assert s["device"].startswith("cuda"), f"gates learned on {s['device']}"
    print(f"{s['steps'] / max(s['seconds'], 1e-9):.1f} gate steps/s ({s['steps']} steps)")
elif kind == "train":
    m = d["history"][-1]
    assert d.get("replicas_identical") is not False, "DDP replicas diverged"
    print(f"{m['images_per_second']:.0f} img/s (epoch {m['epoch']}, {d['world_size']} process(es))")
elif kind == "bench":
    m = d["models"][-1]["stats"]
    print(f"{m['throughput_per_s']:.0f}/s, median {m['median_ms']:.3f} ms ({d['device']})")
elif kind == "latency":
    lat = d["latency"]
    print(f"{lat['median_ms']:.3f} ms = {lat['ratio_to_full']:.2f}x full "
          f"(target {lat['target_ratio']:.2f}x, {d['search']['latency_search']['measured_plans']} plans)")
EOF
}

check_gates-bf16() {
  "${SLIMKIT[@]}" prune resnet20 --flops 50% "${SMALL[@]}" --steps 60 --batch-size 64 --round-to 1 \
    --out "$OUT/gates/plan.json" --no-plot >&2 || return 1
  summarize gates "$OUT/gates/plan.json"
}

check_train-compile() {
  plan_for_checks || return 1
  "${SLIMKIT[@]}" train "$OUT/plan.json" "${SMALL[@]}" --compile --epochs 2 --batch-size 64 --workers 0 \
    --out "$OUT/train" >&2 || return 1
  summarize train "$OUT/train/metrics.json"
}

check_nccl() {
  cat > "$OUT/nccl_check.py" <<'EOF'
import os, time, torch, torch.distributed as dist
torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
dist.init_process_group("nccl")
x = torch.full((16 << 20,), float(dist.get_rank() + 1), device="cuda")  # 64 MB
dist.all_reduce(x)
world = dist.get_world_size()
assert x[0].item() == world * (world + 1) / 2, x[0].item()
torch.cuda.synchronize()
t = time.perf_counter()
for _ in range(10):
    dist.all_reduce(x)
torch.cuda.synchronize()
if dist.get_rank() == 0:
    print(f"{10 * x.numel() * 4 / (time.perf_counter() - t) / 1e9:.1f} GB/s all_reduce, {world} rank(s)")
dist.destroy_process_group()
EOF
  "${TORCHRUN[@]}" --nproc_per_node "$NPROC" "$OUT/nccl_check.py"
}

check_ddp-train() {
  if [ "$NPROC" -lt 2 ]; then echo "SKIP: one GPU (DDP needs two; the nccl check covers the process group)"; return 0; fi
  plan_for_checks || return 1
  "${TORCHRUN[@]}" --nproc_per_node "$NPROC" -m slimkit train "$OUT/plan.json" "${SMALL[@]}" --epochs 1 \
    --batch-size 64 --workers 0 --out "$OUT/train-ddp" >&2 || return 1
  summarize train "$OUT/train-ddp/metrics.json"
}

check_bench-ort-cuda() {
  plan_for_checks || return 1
  "${SLIMKIT[@]}" bench "$OUT/plan.json" --backend ort-cuda --runs 50 --out "$OUT/lat-ort-cuda" >&2 || return 1
  summarize bench "$OUT/lat-ort-cuda.json"
}

check_bench-torch() {
  plan_for_checks || return 1
  "${SLIMKIT[@]}" bench "$OUT/plan.json" --backend torch --device cuda --runs 50 --out "$OUT/lat-torch" >&2 || return 1
  summarize bench "$OUT/lat-torch.json"
}

check_latency-budget() {
  # MobileNet-V1 at batch 32: ResNet-20 at batch 1 is launch-bound on a GPU (every width runs as fast),
  # so no budget below the full model would be reachable and the check would test nothing.
  "${SLIMKIT[@]}" prune mobilenet_v1 --latency 60% --method uniform --backend torch --device cuda --batch 32 \
    --tolerance 0.1 --num-classes 10 --out "$OUT/latency/plan.json" --no-plot >&2 || return 1
  summarize latency "$OUT/latency/plan.json"
}

echo "gpu_check: ${#SELECTED[@]} check(s) on $GPUS GPU(s) with $PY; logs in $OUT"
ROWS=()
FAILED=0
for c in "${SELECTED[@]}"; do
  log="$OUT/$c.log"
  start=$(date +%s.%N)
  result=$( timeout --kill-after=10 "$TIMEOUT" bash -c "$(declare -f); $(declare -p PY SLIMKIT TORCHRUN SMALL OUT NPROC); check_$c" 2>>"$log" )
  code=$?
  secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  printf '%s\n' "$result" >> "$log"
  last=$(printf '%s\n' "$result" | tail -n 1)
  if [ $code -eq 0 ] && [[ "$last" == SKIP:* ]]; then
    status=skipped; thr="-"; note=${last#SKIP: }
  elif [ $code -eq 0 ]; then
    status=ok; thr=$last; note=""
  else
    status=failed; thr="-"; FAILED=1
    [ $code -eq 124 ] && note="timed out after ${TIMEOUT}s" \
      || note=$(grep -E '^(error|Error|.*Error:)' "$log" | tail -n 1)
    [ -n "$note" ] || note=$(grep -v '^\s*$' "$log" | tail -n 1)
  fi
  ROWS+=("$c|$status|$secs|$thr|${note:0:70}")
  echo "  $c: $status (${secs}s)"
done

printf '\n%-16s %-8s %8s  %-44s %s\n' check status seconds throughput note
printf '%-16s %-8s %8s  %-44s %s\n' ---------------- -------- -------- -------------------------------------------- ----
for row in "${ROWS[@]}"; do
  IFS='|' read -r c status secs thr note <<< "$row"
  printf '%-16s %-8s %8s  %-44s %s\n' "$c" "$status" "$secs" "${thr:0:44}" "$note"
done
if [ "$FAILED" -ne 0 ]; then
  echo "gpu_check: FAILED (logs in $OUT)"
  exit "$EXIT_FAILED"
fi
echo "gpu_check: all passed"
