#!/usr/bin/env bash
# Sets up this machine as needed, then runs every test: unit tests, and end-to-end tests of jobs on
# a private containerd and nix-daemon.
set -euo pipefail
cd "$(dirname "$0")/.."
HEARTH_NEED_S3=1 source scripts/setup.sh
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
	echo "not gofmt-ed: $unformatted" >&2
	exit 1
fi
go vet ./...
go test -count=1 -timeout 30m "$@" ./...
