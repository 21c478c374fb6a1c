#!/usr/bin/env bash
# Runs the CUDA kernels of se_fused under compute-sanitizer: memcheck (out-of-bounds
# and misaligned accesses), racecheck (shared-memory hazards) and synccheck (barrier
# misuse), on the small workload in scripts/sanitize_case.py, which also checks the
# results. Each tool has its own time budget; a tool that runs out of it is reported
# as TIMED OUT (not as findings), and the others still run.
#
#   scripts/cuda_sanitize.sh                      # all three tools, every case
#   SANITIZE_TOOLS="memcheck" SANITIZE_QUICK=1 SANITIZE_LIMIT=45 scripts/cuda_sanitize.sh
#
# Environment: PYTHON (default: .venv/bin/python if present, else python),
# COMPUTE_SANITIZER (path to the binary), SANITIZE_TOOLS, SANITIZE_QUICK=1 (10 cases
# instead of all), SANITIZE_LIMIT (seconds per tool, 0 = none) and SANITIZE_LIMIT_<TOOL>
# (e.g. SANITIZE_LIMIT_RACECHECK) to override it per tool, SANITIZE_EXTRA_ARGS (passed to
# compute-sanitizer, e.g. a kernel filter).
# Prints one line per tool, "cuda_sanitize: <tool>: <verdict>", verdict one of clean,
# ERRORS, FAILED (exit code N), TIMED OUT after N s, NOT AVAILABLE (device refused).
# Exit code: 0 all clean; 1 errors or a failed run; 3 only time-outs or refusals; 2 no
# compute-sanitizer.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi

SAN="${COMPUTE_SANITIZER:-}"
if [[ -z "$SAN" ]]; then
  for cand in compute-sanitizer "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" \
              /usr/local/cuda/bin/compute-sanitizer; do
    if command -v "$cand" >/dev/null 2>&1; then SAN="$(command -v "$cand")"; break; fi
  done
fi
if [[ -z "$SAN" ]]; then
  echo "cuda_sanitize: compute-sanitizer not found (set COMPUTE_SANITIZER)" >&2
  exit 2
fi

# One cudaMalloc per tensor, so memcheck sees the true end of every buffer (the
# caching allocator would hide overruns inside its larger segments).
export PYTORCH_NO_CUDA_MEMORY_CACHING=1

TOOLS="${SANITIZE_TOOLS:-memcheck racecheck synccheck}"
read -r -a EXTRA <<<"${SANITIZE_EXTRA_ARGS:-}"
CASE_ARGS=()
[[ "${SANITIZE_QUICK:-0}" == 1 ]] && CASE_ARGS=(--quick)
LOGDIR="$(mktemp -d)"
failed=0
incomplete=0

for tool in $TOOLS; do
  log="$LOGDIR/$tool.log"
  upper=$(echo "$tool" | tr '[:lower:]' '[:upper:]')
  limit_var="SANITIZE_LIMIT_$upper"
  limit="${!limit_var:-${SANITIZE_LIMIT:-0}}"
  echo "=== compute-sanitizer --tool $tool (limit ${limit}s, 0 = none)"
  t0=$(date +%s)
  timeout --signal=INT --kill-after=10 "$limit" \
    "$SAN" --tool "$tool" --error-exitcode 97 --print-limit 50 ${EXTRA[@]+"${EXTRA[@]}"} \
    "$PYTHON" scripts/sanitize_case.py ${CASE_ARGS[@]+"${CASE_ARGS[@]}"} 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  took=$(($(date +%s) - t0))
  # memcheck/synccheck: "ERROR SUMMARY: N errors"; racecheck: "RACECHECK SUMMARY: ... (N errors, M warnings)"
  if grep -Eq "ERROR SUMMARY: [1-9]|\(([1-9][0-9]*) errors?" "$log"; then
    verdict="ERRORS"; failed=1
  elif [[ $rc == 124 || $rc == 137 ]]; then
    verdict="TIMED OUT after ${limit}s (no errors in what ran)"; incomplete=1
  elif grep -Eq "Device not supported|error 999|LibraryNotLoaded" "$log"; then
    verdict="NOT AVAILABLE (compute-sanitizer refused the device)"; incomplete=1
  elif [[ $rc -ne 0 ]]; then
    verdict="FAILED (exit code $rc)"; failed=1
  else
    verdict="clean"
  fi
  echo "cuda_sanitize: $tool: $verdict (${took}s)"
done

rm -rf "$LOGDIR"
if [[ $failed == 1 ]]; then exit 1; fi
if [[ $incomplete == 1 ]]; then exit 3; fi
exit 0
