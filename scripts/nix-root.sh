#!/usr/bin/env bash
# nix-root.sh [ROOT]
#
# Makes, once, a minimal Debian 13 (trixie) root with its nix-bin (Nix 2.26) at ROOT (default
# /var/cache/hearth/trixie-nix): the Nix whose nix-daemon the end-to-end tests' third pass runs
# (HEARTH_TEST_NIX_ROOT), and whose output the nixstore fixtures record. A root already there is
# left as it is. Needs root and the Debian mirror; prints nothing but progress on stderr.
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "$0: must run as root" >&2; exit 1; }
ROOT=${1:-/var/cache/hearth/trixie-nix}
case "$ROOT" in /*) ;; *) echo "$0: the root must be an absolute path, not $ROOT" >&2; exit 1;; esac
ROOT=${ROOT%/}
[ -n "$ROOT" ] || { echo "$0: refusing the root /" >&2; exit 1; }
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
[ -x "$ROOT/usr/bin/nix" ] && exit 0

mkdir -p "$(dirname "$ROOT")"
exec 9>"$ROOT.lock"
flock 9
[ -x "$ROOT/usr/bin/nix" ] && exit 0
log() { printf '[nix-root] %s\n' "$*" >&2; }

# Mount points below a directory, deepest first.
umount_under() {
	local m
	for m in $(awk -v d="$1" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/mounts | sort -r); do
		umount "$m" || umount -l "$m"
	done
}

if ! command -v debootstrap >/dev/null; then
	log "installing debootstrap"
	apt-get install -y debootstrap >&2 || { apt-get update >&2 && apt-get install -y debootstrap >&2; }
fi
[ ! -e "$ROOT" ] || { echo "$0: $ROOT exists but has no usr/bin/nix; remove it" >&2; exit 1; }
log "debootstrapping trixie into $ROOT from $MIRROR"
t0=$(date +%s)
umount_under "$ROOT.partial"
rm -rf "$ROOT.partial"
# libdbi-perl: debootstrap does not resolve virtual packages; nix-bin depends on
# libdbd-sqlite3-perl, which depends on the virtual perl-dbdabi-94, which libdbi-perl provides.
debootstrap --variant=minbase --include=nix-bin,libdbi-perl trixie "$ROOT.partial" "$MIRROR" >&2
umount_under "$ROOT.partial"
mv "$ROOT.partial" "$ROOT"
log "debootstrap took $(( $(date +%s) - t0 ))s"
