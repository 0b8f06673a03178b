#!/usr/bin/env bash
# Installs what hearth's demo and tests run on, when it is missing: Debian's containerd, runc and
# Nix, and the static busybox and bash the test environments are made of. Needs root, Debian 12 and Go.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
	echo "run this as root: containerd, user namespaces and nix-daemon need it" >&2
	exit 1
fi
packages=(containerd runc nix-bin busybox-static bash-static ca-certificates time git)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "installing ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The nix-daemon builds as the members of nixbld (build-users-group), which Debian's nix-bin does
# not create (its nix-setup-systemd package would, but these machines have no systemd).
if ! getent group nixbld >/dev/null; then
	echo "creating the nixbld group and its build users"
	groupadd --system nixbld
	for i in $(seq 1 8); do
		useradd --system --no-create-home --home-dir /var/empty --shell /usr/sbin/nologin \
			--gid nixbld --groups nixbld --comment "Nix build user $i" "nixbld$i"
	done
fi
# A store that has never been opened is made here, once, rather than by test daemons racing to.
if [ ! -d /nix/var/nix/db ]; then
	NIX_REMOTE=local nix-store --init
fi
if ! command -v go >/dev/null; then
	if [ -x /usr/local/go/bin/go ]; then
		export PATH=/usr/local/go/bin:$PATH
	else
		echo "Go 1.26 is needed to build hearth: install it to /usr/local/go (https://go.dev/doc/install)" >&2
		exit 1
	fi
fi
# The S3 server the cache tests and benchmarks push to (it stands in for Backblaze B2), built from
# the Go module proxy at a pinned version; the demo does not need it.
export PATH=$PATH:$(go env GOPATH)/bin
if [ "${HEARTH_NEED_S3:-}" = 1 ] && ! command -v versitygw >/dev/null; then
	echo "building versitygw (the test S3 server); this takes a few minutes once"
	go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
fi
# The container registry the image tests pull from, with token authentication as GitLab's is set
# up (the token issuer is the tests' own, in internal/testenv/gitlab), built once like versitygw.
if [ "${HEARTH_NEED_REGISTRY:-}" = 1 ] && [ ! -x "$(go env GOPATH)/hearth/registry-3.1.2/registry" ]; then
	echo "building the distribution registry (the test container registry); this takes a minute once"
	GOBIN="$(go env GOPATH)/hearth/registry-3.1.2" go install github.com/distribution/distribution/v3/cmd/registry@v3.1.2
fi
