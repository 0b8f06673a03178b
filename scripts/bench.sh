#!/usr/bin/env bash
# Sets up this machine as needed, then runs hearth's benchmarks; each prints medians and the ratio
# to a floor measured in the same run. Results go in BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
HEARTH_NEED_S3=1 HEARTH_NEED_TARGETS=1 source scripts/setup.sh
exec go run ./internal/tools/bench "$@"
