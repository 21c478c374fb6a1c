#!/usr/bin/env bash
# The whole GPU check in one command, for a lent H100/H200 (see DEVELOPERS.md, "The GPU"):
# build in place with that machine's python3, run the test suite (CUDA tests included),
# run the kernels under compute-sanitizer, run the benchmark, and write everything under
# one folder, with a short summary at the end. Sized to finish well inside 10 minutes.
#
#   scripts/gpu_check.sh [OUT]        # OUT defaults to $OUT, else ./gpu_check_out
#
# Without a visible GPU it still builds and tests what it can, says which steps it
# skipped and why, and writes its folder. It never changes the GPU's settings.
#
# Budget (seconds, each step killed at its limit): build 240, CUDA tests 150, sanitizer
# 100, the benchmark whatever is left of GPU_CHECK_BUDGET (default 540) minus 40, the
# memory benchmark what is left after that; the CPU tests (300) run beside the sanitizer
# and the benchmark with the GPU hidden from them. Files written (at most 8, as the device
# tool brings back): gpu_check.log, junit.xml, and the benchmarks' results files.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUTDIR="${1:-${OUT:-$ROOT/gpu_check_out}}"
mkdir -p "$OUTDIR"
LOG="$OUTDIR/gpu_check.log"
: >"$LOG"
PY="${PYTHON:-python3}"
BUDGET="${GPU_CHECK_BUDGET:-540}"
START=$(date +%s)
export PYTHONUNBUFFERED=1

say() { echo "$*" | tee -a "$LOG"; }
elapsed() { echo $(($(date +%s) - START)); }
left() { echo $((BUDGET - $(elapsed))); }
# step NAME LIMIT CMD...: runs CMD with a time limit, output to the log, records its status
declare -A STATUS
step() {
  local name="$1" limit="$2"; shift 2
  say ""
  say "=== $name (limit ${limit}s, at $(elapsed)s) ==="
  local t0=$(date +%s)
  timeout --signal=INT --kill-after=15 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  STATUS[$name]="rc=$rc in $(($(date +%s) - t0))s"
  [[ $rc == 124 ]] && STATUS[$name]="TIMED OUT after ${limit}s"
  say "--- $name: ${STATUS[$name]}"
  return $rc
}

say "se_fused GPU check, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
say "python: $($PY --version 2>&1); torch: $($PY -c 'import torch; print(torch.__version__)' 2>&1)"
GPU=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >>"$LOG" 2>&1 \
   && $PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>>"$LOG"; then
  GPU=1
  ARCH=$($PY -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
  say "GPU: $($PY -c 'import torch; print(torch.cuda.get_device_name())') (sm $ARCH)"
else
  ARCH=9.0
  say "no CUDA device visible: the CUDA tests, the sanitizer and the GPU benchmark are SKIPPED"
fi

# --- build: in place, this machine's python3 and torch, every core, the visible arch only
for cand in "${CUDA_HOME:-}" /usr/local/cuda; do
  if [[ -n "$cand" && -f "$cand/include/cuda_runtime.h" ]]; then export CUDA_HOME="$cand"; break; fi
done
export MAX_JOBS="${MAX_JOBS:-$(nproc)}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$ARCH}"
rm -rf build se_fused/_C*.so
if ! step build 240 $PY setup.py build_ext --inplace; then
  say "build failed: nothing else can run"; tail -n 40 "$LOG"; exit 1
fi

# --- tests: the CUDA file first (the point of this check); the rest are CPU tests (the
# CUDA kernels' CPU emulation among them), run with the GPU hidden, in the background
# while the sanitizer and the benchmark have the GPU to themselves
XDIST=()
$PY -c 'import xdist' 2>/dev/null && XDIST=(-n 4)
step tests-cuda 150 $PY -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py \
  --junitxml="$OUTDIR/junit.xml"
REST_LOG="$(mktemp)"
( t0=$(date +%s)
  CUDA_VISIBLE_DEVICES="" timeout --signal=INT --kill-after=15 300 $PY -m pytest -q \
    -p no:cacheprovider "${XDIST[@]}" tests --ignore=tests/test_cuda.py \
    --junitxml="$OUTDIR/junit-rest.xml" >"$REST_LOG" 2>&1
  echo "rc=$? in $(($(date +%s) - t0))s" >"$REST_LOG.status" ) &
REST_PID=$!

# --- sanitizer: memcheck, racecheck, synccheck; some runtimes refuse the device
SANITIZER="skipped (no GPU)"
if [[ $GPU == 1 ]]; then
  if step sanitizer 100 env PYTHON="$PY" bash scripts/cuda_sanitize.sh; then
    SANITIZER="clean"
  elif grep -q -E "Device not supported|error 999|LibraryNotLoaded" "$LOG"; then
    SANITIZER="not available on this runtime (compute-sanitizer refused the device)"
  else
    SANITIZER="FINDINGS or failure: see the sanitizer section of gpu_check.log"
  fi
fi

# --- benchmark: --full in float32 and bfloat16, both layouts, batch 1 first, then the
# training batch, then the model-level runs, inside what is left of the budget; torch.compile
# (tens of seconds per case) on the target cases only
BENCH="skipped (no GPU)"
if [[ $GPU == 1 ]]; then
  B=$(( $(left) - 40 ))
  if (( B > 60 )); then
    step benchmark $((B + 30)) $PY benchmarks/bench_se.py --full --device cuda \
      --formats float32:nchw,float32:channels_last,bfloat16:nchw,bfloat16:channels_last \
      --compile targets --rep-ms 50 --time-budget "$B" --out "$OUTDIR"
    BENCH="${STATUS[benchmark]}"
  else
    BENCH="skipped: ${B}s left of the budget"
  fi
  M=$(( $(left) - 10 ))
  if (( M > 45 )); then
    step memory $M $PY benchmarks/memory.py --device cuda --out "$OUTDIR"
  fi
fi
wait "$REST_PID"
say ""
say "=== tests-rest (CPU, in the background) ==="
cat "$REST_LOG" >>"$LOG"
STATUS[tests-rest]="$(cat "$REST_LOG.status" 2>/dev/null || echo 'no status')"
say "--- tests-rest: ${STATUS[tests-rest]}"

# --- summary
count() {  # tests, failures, errors, skipped of a junit file
  [[ -f "$1" ]] || { echo "no junit file"; return; }
  $PY - "$1" <<'EOF'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else list(root)
t = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
print(f"{t['tests'] - t['failures'] - t['errors'] - t['skipped']} passed, {t['failures']} failed, "
      f"{t['errors']} errors, {t['skipped']} skipped")
EOF
}
say ""
say "=== summary ($(elapsed)s) ==="
say "build:       ${STATUS[build]}"
say "CUDA tests:  $(count "$OUTDIR/junit.xml") (${STATUS[tests-cuda]})"
say "other tests: $(count "$OUTDIR/junit-rest.xml") (${STATUS[tests-rest]})"
say "sanitizer:   $SANITIZER"
say "benchmark:   $BENCH"
rm -f "$OUTDIR/junit-rest.xml"  # counted above; keeps the folder within 8 files
for md in "$OUTDIR"/*.md; do
  [[ -f "$md" ]] || continue
  say ""
  say "--- $(basename "$md"): targets"
  sed -n '/^#* *Targets/,/^#/p' "$md" | head -n 30 | tee -a "$LOG"
done
