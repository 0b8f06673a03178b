#!/usr/bin/env bash
# Sets up this machine as needed, then runs every test: unit tests, and end-to-end tests of jobs on
# a private containerd and nix-daemon — against Debian's containerd 1.6, then again against
# containerd 2.4 built from the Go module proxy.
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

containerd2="$(go env GOPATH)/hearth/containerd-2.4.2"
if [ ! -x "$containerd2/containerd" ]; then
	echo "building containerd 2.4.2 for the second end-to-end run"
	GOBIN="$containerd2" CGO_ENABLED=0 go install -tags "no_btrfs no_devmapper no_zfs" \
		github.com/containerd/containerd/v2/cmd/containerd@v2.4.2 \
		github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@v2.4.2
fi
echo "end-to-end tests again, against containerd 2.4.2:"
HEARTH_TEST_CONTAINERD="$containerd2" go test -count=1 -timeout 30m "$@" ./internal/e2e/
