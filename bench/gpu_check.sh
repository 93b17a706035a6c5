#!/usr/bin/env bash
# Everything GPU-bound, measured and printed in one command (issue 14, deliverable 4):
#   1. scoring throughput (tokens/s) with prefix sharing (mergeopt) and without (lm-eval's HFLM),
#      and the floor: bench/eval_throughput.py --device cuda
#   2. materialization bandwidth, 8 x 1B bf16, pool resident on the GPU vs a device copy, and
#      streamed from pinned host memory vs a pinned host -> device copy: bench/gpu_check.py
#   3. a 2-worker study on one GPU vs 1 worker: bench/workers_throughput.py (GPU_CHECK_DB: a
#      PostgreSQL URL; default: a SQLite file in a temp folder)
#   4. chunked TIES / DARE on the device vs the per-tensor formulas (agreement, time, peak
#      device memory), 8 x 50M bf16: bench/gpu_bounded.py
#
#   bench/gpu_check.sh          on a machine with an NVIDIA GPU (exits 0 with a message without one)
#   bench/gpu_check.sh --cpu    the same pieces at tiny sizes on the CPU (what the tests run)
#
# Parts run in turn; one failing does not stop the others; the exit status is 1 if any failed.
# GPU_CHECK_PARTS=scoring,materialize,workers,bounded (the default) picks the parts to run.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1

if [ "${1:-}" = "--cpu" ]; then
  echo "gpu_check: --cpu, tiny sizes on the CPU (a dry run of the pieces: the figures mean nothing)"
  SCORE=(--device cpu --hidden 32 --layers 1 --vocab 64 --docs 4 --ctx 30 --ending 5 --repeats 1 --batch-size 8)
  MAT=(--device cpu --n 2 --params 2e6 --dtype float32 --repeats 1)
  WORK=(--trials 14 --docs 4)
  BOUNDED=(--device cpu --n 3 --numel 2e5)
elif [ -n "${1:-}" ]; then
  echo "usage: bench/gpu_check.sh [--cpu]" >&2
  exit 2
else
  if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1 \
     || ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no NVIDIA GPU here (nvidia-smi or torch.cuda unavailable): nothing measured."
    echo "Run it on a machine with an NVIDIA GPU; bench/gpu_check.sh --cpu checks the pieces on the CPU."
    exit 0
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  SCORE=(--device cuda --dtype bfloat16 --hidden 1024 --layers 8 --vocab 32000 --docs 400 --repeats 3 --batch-size 32)
  MAT=(--device cuda --n 8 --params 1e9 --dtype bfloat16 --repeats 5)
  WORK=(--trials 40 --docs 1000)
  BOUNDED=(--device cuda --n 8 --numel 5e7)
fi
TMP=$(mktemp -d -t mergeopt-gpucheck-XXXX)
trap 'rm -rf "$TMP"' EXIT
DB=${GPU_CHECK_DB:-sqlite:///$TMP/gpu_check.db}
failed=()

PARTS=",${GPU_CHECK_PARTS:-scoring,materialize,workers,bounded},"

part() {  # part KEY NAME CMD...: run (if KEY is in PARTS), print, remember a failure
  local key=$1 name=$2
  shift 2
  [[ $PARTS == *",$key,"* ]] || return 0
  echo
  echo "== $name: $*"
  local t0=$SECONDS
  if "$@"; then
    echo "== $name: done in $((SECONDS - t0)) s"
  else
    echo "== $name: FAILED (exit $?)"
    failed+=("$name")
  fi
}

part scoring "scoring throughput (prefix sharing vs lm-eval HFLM vs floor)" "$PY" bench/eval_throughput.py "${SCORE[@]}"
part materialize "materialization bandwidth" "$PY" bench/gpu_check.py "${MAT[@]}"
part workers "1 vs 2 workers on one device" "$PY" bench/workers_throughput.py --db "$DB" "${WORK[@]}"
part bounded "chunked TIES / DARE vs the per-tensor formulas" "$PY" bench/gpu_bounded.py "${BOUNDED[@]}"

echo
if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu_check: failed: ${failed[*]}"
  exit 1
fi
echo "gpu_check: all parts done"
