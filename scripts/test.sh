#!/usr/bin/env bash
# Sets up this machine as needed, then runs every test: unit tests, and end-to-end tests of jobs on
# a private containerd and nix-daemon — against Debian's containerd 1.6 and Nix 2.8, again against
# containerd 2.4 built from the Go module proxy, and again against Debian 13's Nix 2.26 as the
# daemon. Arguments go to go test; -short leaves out every test of the real parts, and says so.
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
if [ -z "${HEARTH_NIXPKGS_LIB:-}" ]; then
	echo "SKIPPED: the NixOS modules are not evaluated (nixos/eval_test.go): set HEARTH_NIXPKGS_LIB to a copy of github.com/nix-community/nixpkgs.lib to run it"
fi
go test -count=1 -timeout 30m "$@" ./...

if [ -n "$short" ]; then
	cat >&2 <<'MSG'

  ********************************************************************************************
  * -short: only the unit tests ran. SKIPPED, and proven by nothing above:                   *
  *   internal/e2e          every end-to-end test of the driver on containerd and nix-daemon *
  *   cache/file, s3, attic the backends' conformance suite and their tests on a real daemon *
  *   the second and third end-to-end runs, against containerd 2.4 and against Nix 2.26      *
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

# A current Nix: Debian 13's nix-bin 2.26 as every nix-daemon, in a root of its own (made once),
# on a store of its own — a fresh one, mounted at /nix for this run only, in a mount namespace of
# its own, so the host's store is neither read nor changed. Clients stay Debian 12's Nix 2.8.
nixroot=/var/cache/hearth/trixie-nix
scripts/nix-root.sh "$nixroot"
store=$(mktemp -d /var/tmp/hearth-nix-2.26.XXXXXX)
chmod 0755 "$store" # it becomes /nix, which build users must be able to enter
trap 'chmod -R u+w "$store" 2>/dev/null; rm -rf "$store"' EXIT
echo "end-to-end tests again, against Nix 2.26 (Debian 13) as every nix-daemon:"
HEARTH_TEST_NIX_ROOT="$nixroot" unshare --mount --propagation private -- \
	sh -c 'mkdir -p /nix && mount --bind "$0" /nix && exec "$@"' "$store" \
	go test -count=1 -timeout 30m "$@" ./internal/e2e/
