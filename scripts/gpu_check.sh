#!/usr/bin/env bash
# The GPU check for a lent H100/H200 (DEVELOPERS.md, "The GPU"), in two modes:
#
#   scripts/gpu_check.sh --triage [OUT]   the first run, <= 6 minutes: build; the CUDA
#                                         value tests (CUDA_TESTS); memcheck on 10
#                                         cases; a timing table of the model's falsifiable
#                                         predictions (benchmarks/gpu_triage.py), printed last
#   scripts/gpu_check.sh [OUT]            the full check, <= 9 minutes: build; every CUDA
#                                         test (CUDA_TESTS); memcheck, racecheck and synccheck,
#                                         each with its own budget; the benchmark (results
#                                         JSON by bench_se.py into OUT); the memory benchmark
#                                         if time is left
#
# OUT defaults to $OUT, else ./gpu_check_out. It runs with the machine's own python3 and
# torch (PYTHON overrides; no venv, no pip). Every step has a time limit and is reported
# as TIMED OUT when it reaches it, not as a failure of what it checks; a hung kernel
# cannot fail one test alone (its CUDA context is stuck), so faulthandler dumps every
# stack first and the log names the test. Without a visible GPU every GPU step, the
# build included (nothing here would load it), is reported SKIPPED; the triage still
# prints the model's predictions. No CPU test suite runs beside the GPU steps: CI runs it.
# It never changes the GPU's settings. Files written (the device tool brings back 8):
# gpu_check.log, junit.xml, gpu_triage.json (triage) or the benchmarks' files (full).
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODE=full
if [[ "${1:-}" == "--triage" ]]; then MODE=triage; shift; fi
OUTDIR="${1:-${OUT:-$ROOT/gpu_check_out}}"
mkdir -p "$OUTDIR"
LOG="$OUTDIR/gpu_check.log"
: >"$LOG"
PY="${PYTHON:-python3}"
if [[ $MODE == triage ]]; then BUDGET="${GPU_CHECK_BUDGET:-330}"; else BUDGET="${GPU_CHECK_BUDGET:-540}"; fi
START=$(date +%s)
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

say() { echo "$*" | tee -a "$LOG"; }
elapsed() { echo $(($(date +%s) - START)); }
left() { echo $((BUDGET - $(elapsed))); }
declare -A STATUS
# step NAME LIMIT CMD...: runs CMD with a time limit, output to the log, records its status
step() {
  local name="$1" limit="$2"; shift 2
  if (( limit < 5 )); then skip "$name" "${limit}s left of the budget"; return 124; fi
  say ""
  say "=== $name (limit ${limit}s, at $(elapsed)s) ==="
  local t0=$(date +%s)
  timeout --signal=INT --kill-after=15 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  STATUS[$name]="rc=$rc in $(($(date +%s) - t0))s"
  [[ $rc == 124 || $rc == 137 ]] && STATUS[$name]="TIMED OUT after ${limit}s"
  say "--- $name: ${STATUS[$name]}"
  return $rc
}
skip() { STATUS[$1]="SKIPPED: $2"; say ""; say "=== $1: SKIPPED: $2"; }
# at most LIMIT seconds, and no more than what is left of the budget less RESERVE
cap() { local l=$(( $(left) - $2 )); (( l < $1 )) && echo "$l" || echo "$1"; }

say "se_fused GPU check ($MODE), $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
say "python: $($PY --version 2>&1); torch: $($PY -c 'import torch; print(torch.__version__)' 2>&1)"
GPU=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >>"$LOG" 2>&1 \
   && $PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>>"$LOG"; then
  GPU=1
  ARCH=$($PY -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
  say "GPU: $($PY -c 'import torch; print(torch.cuda.get_device_name())') (sm $ARCH)"
else
  say "no CUDA device visible: build, CUDA tests, sanitizer and GPU timings are SKIPPED"
fi
NO_GPU="no CUDA device visible"

# --- build: in place, this machine's python3 and torch, every core, the visible arch only
if [[ $GPU == 1 ]]; then
  for cand in "${CUDA_HOME:-}" /usr/local/cuda; do
    if [[ -n "$cand" && -f "$cand/include/cuda_runtime.h" ]]; then export CUDA_HOME="$cand"; break; fi
  done
  export MAX_JOBS="${MAX_JOBS:-$(nproc)}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$ARCH}"
  rm -rf build se_fused/_C*.so
  if ! step build "$([[ $MODE == triage ]] && echo 180 || echo 240)" $PY setup.py build_ext --inplace; then
    say "build failed: nothing else can run"; tail -n 40 "$LOG"; exit 1
  fi
else
  skip build "$NO_GPU"
fi

# --- CUDA tests: a per-test time limit where pytest-timeout is installed (it is on the
# GPU image); faulthandler dumps the stacks just before it
TIMEOUT_ARGS=()
if $PY -c 'import pytest_timeout' 2>/dev/null; then
  TIMEOUT_ARGS=(--timeout="$([[ $MODE == triage ]] && echo 60 || echo 90)"
                -o faulthandler_timeout="$([[ $MODE == triage ]] && echo 50 || echo 80)")
else
  say "pytest-timeout not installed: no per-test time limit"
fi
# The CUDA tests: tests/test_cuda.py (CUDA only) and the "cuda" variants of the cases
# that hold on both devices (tests/test_op.py, the device fixture of tests/conftest.py);
# -k cuda keeps both (pytest matches the module's name too) and leaves the CPU variants.
CUDA_TESTS=(tests/test_cuda.py tests/test_op.py)
if [[ $GPU == 1 ]]; then
  if [[ $MODE == triage ]]; then
    step tests-cuda "$(cap 90 130)" $PY -m pytest -v -rs -p no:cacheprovider "${CUDA_TESTS[@]}" \
      -k "cuda and (match_reference or bits or graph)" ${TIMEOUT_ARGS[@]+"${TIMEOUT_ARGS[@]}"} --junitxml="$OUTDIR/junit.xml"
  else
    step tests-cuda "$(cap 150 300)" $PY -m pytest -v -rs -p no:cacheprovider "${CUDA_TESTS[@]}" \
      -k cuda ${TIMEOUT_ARGS[@]+"${TIMEOUT_ARGS[@]}"} --junitxml="$OUTDIR/junit.xml"
  fi
else
  skip tests-cuda "$NO_GPU"
fi

# --- sanitizer: each tool its own budget; a tool out of time is TIMED OUT, not findings
SANITIZER=()
sanitize() {  # TOOL LIMIT QUICK
  local name="sanitizer-$1"
  if (( $2 < 15 )); then skip "$name" "$2 s left of the budget"; SANITIZER+=("$1: SKIPPED (budget)"); return; fi
  step "$name" $(( $2 + 20 )) env PYTHON="$PY" SANITIZE_TOOLS="$1" SANITIZE_QUICK="$3" \
    SANITIZE_LIMIT="$2" bash scripts/cuda_sanitize.sh
  local line
  line=$(grep "^cuda_sanitize: $1:" "$LOG" | tail -n 1)
  SANITIZER+=("${line#cuda_sanitize: }")
  [[ -z "$line" ]] && SANITIZER+=("$1: no verdict (${STATUS[$name]}), see the log")
}
if [[ $GPU == 1 ]]; then
  if [[ $MODE == triage ]]; then
    sanitize memcheck "$(cap 40 95)" 1
  else
    sanitize memcheck "$(cap 120 240)" 0
    sanitize racecheck "$(cap 60 180)" 1
    sanitize synccheck "$(cap 45 150)" 1
  fi
else
  SANITIZER=("SKIPPED: $NO_GPU")
fi

# --- timings
TRIAGE_TXT="$OUTDIR/.triage_table"
if [[ $MODE == triage ]]; then
  T=$(( $(left) - 15 ))
  (( T > 75 )) && T=75
  if [[ $GPU == 1 ]] && (( T < 20 )); then
    skip timing "${T}s left of the budget"
  else
    (( T < 20 )) && T=20
    step timing $(( T + 30 )) bash -c "$PY benchmarks/gpu_triage.py --budget $T --out '$OUTDIR' >'$TRIAGE_TXT'"
  fi
else
  BENCH="SKIPPED: $NO_GPU"
  if [[ $GPU == 1 ]]; then
    B=$(( $(left) - 40 ))
    if (( B > 60 )); then
      # batch 1 first, then the training batch; torch.compile on the target cases only
      step benchmark $((B + 30)) $PY benchmarks/bench_se.py --full --device cuda \
        --formats float32:nchw,bfloat16:channels_last --compile targets --rep-ms 50 \
        --time-budget "$B" --out "$OUTDIR"
      BENCH="${STATUS[benchmark]}"
    else
      BENCH="SKIPPED: ${B}s left of the budget"
    fi
    M=$(( $(left) - 10 ))
    if (( M > 45 )); then
      step memory $M $PY benchmarks/memory.py --device cuda --out "$OUTDIR"
    fi
  fi
fi

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
say "=== summary ($MODE, $(elapsed)s) ==="
say "build:       ${STATUS[build]}"
if [[ $GPU == 1 ]]; then
  say "CUDA tests:  $(count "$OUTDIR/junit.xml") (${STATUS[tests-cuda]})"
  hung=$(awk '/^tests\/test_(cuda|op)\.py::/ {last = $1} /Timeout/ {print last; exit}' "$LOG")
  [[ -n "$hung" ]] && say "             timed out in or after: $hung"
else
  say "CUDA tests:  ${STATUS[tests-cuda]}"
fi
for s in "${SANITIZER[@]}"; do say "sanitizer:   $s"; done
if [[ $MODE == triage ]]; then
  say "timing:      ${STATUS[timing]}"
  if [[ -s "$TRIAGE_TXT" ]]; then
    say ""
    say "=== timing: the model's predictions against this run (benchmarks/gpu_model.py) ==="
    tee -a "$LOG" <"$TRIAGE_TXT"
  fi
  rm -f "$TRIAGE_TXT"
else
  say "benchmark:   $BENCH"
  if ls "$OUTDIR"/*.json >/dev/null 2>&1; then
    say ""
    $PY scripts/targets.py "$OUTDIR" 2>&1 | head -n 30 | tee -a "$LOG"
  fi
fi
