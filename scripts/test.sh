#!/usr/bin/env bash
# Sets up this machine as needed, then runs every test: unit tests, and end-to-end tests of jobs on
# a private containerd and nix-daemon — against Debian's containerd 1.6, then again against
# containerd 2.4 built from the Go module proxy. Arguments go to go test; -short leaves out every
# test of the real parts, and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
short=
for a in "$@"; do
	f=${a#-}
	f=${f#-}
	case "$f" in
	short | test.short) short=1 ;;
	short=* | test.short=*) case "${f#*=}" in 1 | t | T | true | TRUE | True) short=1 ;; esac ;;
	esac
done
if [ -n "$short" ] && [ -n "${HEARTH_CI:-}" ]; then
	echo "CI runs every test: -short, which skips the tests on real parts, is refused here" >&2
	exit 2
fi
HEARTH_NEED_S3=1 HEARTH_NEED_REGISTRY=1 HEARTH_NEED_TARGETS=1 source scripts/setup.sh
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
	echo "not gofmt-ed: $unformatted" >&2
	exit 1
fi
go vet ./...
go test -count=1 -timeout 30m "$@" ./...

if [ -n "$short" ]; then
	cat >&2 <<'MSG'

  ********************************************************************************************
  * -short: only the unit tests ran. SKIPPED, and proven by nothing above:                   *
  *   internal/e2e          every end-to-end test of the driver on containerd and nix-daemon *
  *   cache/file, s3, attic the backends' conformance suite and their tests on a real daemon *
  *   the second end-to-end run, against containerd 2.4                                      *
  * Run ./scripts/test.sh without -short (as root) before calling anything done.             *
  ********************************************************************************************
MSG
	exit 0
fi

containerd2="$(go env GOPATH)/hearth/containerd-2.4.2"
if [ ! -x "$containerd2/containerd" ]; then
	echo "building containerd 2.4.2 for the second end-to-end run"
	GOBIN="$containerd2" CGO_ENABLED=0 go install -tags "no_btrfs no_devmapper no_zfs" \
		github.com/containerd/containerd/v2/cmd/containerd@v2.4.2 \
		github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@v2.4.2
fi
echo "end-to-end tests again, against containerd 2.4.2:"
HEARTH_TEST_CONTAINERD="$containerd2" go test -count=1 -timeout 30m "$@" ./internal/e2e/
