#!/usr/bin/env bash
# The GPU smoke test: what the CPU machine could only read, run once on a GPU machine (see
# benchmarks/gpu_smoke.py for the checks). At most 10 minutes on one GPU.
#
#   bash benchmarks/gpu_smoke.sh             # on a GPU machine: PASS/FAIL per check, exit 1 if any failed
#   bash benchmarks/gpu_smoke.sh --dry-run   # anywhere (CI runs it): everything it would run exists and parses
set -euo pipefail
cd "$(dirname "$0")/.."
exec python benchmarks/gpu_smoke.py "$@"
