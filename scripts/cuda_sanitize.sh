#!/usr/bin/env bash
# Runs the CUDA kernels of se_fused under compute-sanitizer: memcheck (out-of-bounds
# and misaligned accesses), racecheck (shared-memory hazards) and synccheck (barrier
# misuse), on the small workload in scripts/sanitize_case.py, which also checks the
# results. Exits non-zero if any tool reports an error or a result is wrong.
#
#   scripts/cuda_sanitize.sh                      # all three tools
#   SANITIZE_TOOLS="memcheck" scripts/cuda_sanitize.sh
#
# Environment: PYTHON (default: .venv/bin/python if present, else python),
# COMPUTE_SANITIZER (path to the binary), SANITIZE_TOOLS, SANITIZE_EXTRA_ARGS
# (passed to compute-sanitizer, e.g. a kernel filter).
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
LOGDIR="$(mktemp -d)"
status=0

for tool in $TOOLS; do
  log="$LOGDIR/$tool.log"
  echo "=== compute-sanitizer --tool $tool"
  "$SAN" --tool "$tool" --error-exitcode 97 --print-limit 50 ${EXTRA[@]+"${EXTRA[@]}"} \
    "$PYTHON" scripts/sanitize_case.py 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  # memcheck/synccheck: "ERROR SUMMARY: N errors"; racecheck: "RACECHECK SUMMARY: ... (N errors, M warnings)"
  if grep -Eq "ERROR SUMMARY: [1-9]|\(([1-9][0-9]*) errors?" "$log"; then
    echo "cuda_sanitize: $tool reported errors" >&2
    status=1
  elif [[ $rc -ne 0 ]]; then
    echo "cuda_sanitize: $tool run failed (exit code $rc)" >&2
    status=1
  else
    echo "cuda_sanitize: $tool clean"
  fi
done

rm -rf "$LOGDIR"
exit $status
