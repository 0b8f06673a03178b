#!/usr/bin/env bash
# Installs what hearth's demo and tests run on, when it is missing: Debian's containerd, runc and
# Nix, and the static busybox and bash the test environments are made of. Needs root, Debian 12 and Go.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
	echo "run this as root: containerd, user namespaces and nix-daemon need it" >&2
	exit 1
fi
# Jobs on the bridge network (the default) need the CNI plugins, iptables and iproute2; the tests'
# stand-in for the outside world answers DNS with dnsmasq.
packages=(containerd runc nix-bin busybox-static bash-static ca-certificates time git
	containernetworking-plugins iptables iproute2 dnsmasq-base)
# The SSH deploy targets (internal/testenv/sshtarget): Debian hosts booted with systemd-nspawn.
if [ "${HEARTH_NEED_TARGETS:-}" = 1 ]; then
	packages+=(debootstrap systemd-container openssh-client zstd)
fi
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
# The base root filesystem of the SSH deploy targets (internal/testenv/sshtarget), built once: a
# minimal Debian bookworm with systemd, sshd and Debian's Nix, as a zstd tarball each test run
# unpacks and overlays per target. Delete the tarball to rebuild it.
if [ "${HEARTH_NEED_TARGETS:-}" = 1 ] && [ ! -f /var/cache/hearth/target-base-bookworm.tar.zst ]; then
	(
		set -euo pipefail
		cache=/var/cache/hearth
		mkdir -p "$cache"
		exec 9>"$cache/target-base-bookworm.lock"
		flock 9
		[ ! -f "$cache/target-base-bookworm.tar.zst" ] || exit 0
		mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
		mirror=${mirror:-http://deb.debian.org/debian}
		echo "building the SSH deploy targets' base system from $mirror; this takes a minute once"
		tmp=$(mktemp -d "$cache/target-base.XXXXXX")
		# debootstrap mounts /proc and /sys in the root while it works: never delete through them.
		trap 'umount -R "$tmp/root/proc" "$tmp/root/sys" 2>/dev/null || true; rm -rf --one-file-system "$tmp"' EXIT
		root=$tmp/root
		# debootstrap resolves no virtual packages: nix-bin needs libdbi-perl named. libpam-systemd
		# makes SSH sessions logind sessions, as on NixOS.
		debootstrap --variant=minbase \
			--include=systemd,systemd-sysv,openssh-server,nix-bin,libdbi-perl,libpam-systemd,dbus,iproute2,sudo,util-linux \
			bookworm "$root" "$mirror" >"$tmp/debootstrap.log" 2>&1 || {
			tail -n 30 "$tmp/debootstrap.log" >&2
			exit 1
		}
		# Ed25519 and ECDSA host keys only: an RSA key costs each target half a second of CPU at its
		# first boot.
		cat >"$root/etc/ssh/sshd_config.d/hearth.conf" <<'CONF'
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
HostKey /etc/ssh/ssh_host_ed25519_key
HostKey /etc/ssh/ssh_host_ecdsa_key
CONF
		# debootstrap copied this machine's resolver and name; the targets have no DNS (a lookup
		# fails at once rather than timing out) and get their names at boot.
		printf '# no DNS on SSH targets\nnameserver 127.0.0.1\n' >"$root/etc/resolv.conf"
		printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
		: >"$root/etc/hostname"
		# Nothing on a target reaches for the network on its own.
		for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer; do
			ln -sf /dev/null "$root/etc/systemd/system/$u"
		done
		mkdir -p "$root/etc/nix"
		cat >"$root/etc/nix/nix.conf" <<'CONF'
build-users-group =
sandbox = false
CONF
		# Each target makes its own host keys and machine-id on its first boot.
		rm -f "$root"/etc/ssh/ssh_host_*
		: >"$root/etc/machine-id"
		rm -f "$root/var/lib/dbus/machine-id"
		cat >"$root/etc/systemd/system/hearth-ssh-hostkeys.service" <<'UNIT'
[Unit]
Description=SSH host keys, made on first boot (ssh-keygen -A without RSA)
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
# ed25519 last: its public key is what sshtarget waits for.
ExecStart=/usr/bin/ssh-keygen -q -t ecdsa -N "" -f /etc/ssh/ssh_host_ecdsa_key
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key

[Install]
RequiredBy=ssh.service
UNIT
		chroot "$root" systemctl enable hearth-ssh-hostkeys.service ssh.service >/dev/null 2>&1
		chroot "$root" useradd --create-home --home-dir /home/deploy --shell /bin/sh deploy
		chroot "$root" nix-store --init
		rm -rf "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
			"$root"/var/cache/apt/archives/partial/* "$root"/var/lib/apt/lists/* "$root"/var/log/*.log
		tar --zstd --numeric-owner --xattrs --xattrs-include='*' -C "$root" -cpf "$tmp/base.tar.zst" .
		mv "$tmp/base.tar.zst" "$cache/target-base-bookworm.tar.zst"
		echo "built $cache/target-base-bookworm.tar.zst ($(du -h "$cache/target-base-bookworm.tar.zst" | cut -f1))"
	)
fi
