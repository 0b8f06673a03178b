#!/usr/bin/env bash
# regenerate.sh OUTDIR
#
# Produces real `nix path-info --json` output from Nix 2.26 (Debian trixie's
# nix-bin) for the nixstore test fixtures, from scratch:
#
#   1. makes a minimal trixie root with nix-bin at $NIX226_ROOT (default
#      /var/cache/hearth/trixie-nix) with scripts/nix-root.sh, unless it is there;
#   2. wipes the root's /nix and builds, in that private store:
#        fixture-a   input-addressed derivation output (a small file)
#        fixture-b   input-addressed derivation output referring to fixture-a,
#                    signed with the test-only key "fixture-1"
#        fixture-ca  `nix-store --add` of a small file (content-addressed)
#   3. writes into OUTDIR:
#        nix-2.26.json            nix path-info --json A B CA
#        nix-2.26-recursive.json  nix path-info --json --recursive B
#        nix-2.26-invalid.json    nix path-info --json <invalid path> B (stdout)
#        nix-2.26-invalid.stderr  ... its stderr
#        nix-2.26-invalid.exit    ... its exit status
#        nix-2.26-version.txt     nix --version and the Debian package version
#        fixture-1.pub            public key that verifies fixture-b's signature
#
# Environment:
#   NIX226_ROOT            chroot directory (default /var/cache/hearth/trixie-nix)
#   DEBIAN_MIRROR          mirror for debootstrap (default http://deb.debian.org/debian)
#   FRESH_KEY=1            sign with a freshly generated key instead of the fixed one
#   PIN_REGISTRATION_TIME  if set (seconds since the epoch), rewrite every
#                          registrationTime in the store's database to this value
#                          before querying, making the output byte-for-byte
#                          reproducible. Unset: real registration times.
#
# Needs root (debootstrap, chroot, mount). Touches nothing outside NIX226_ROOT,
# NIX226_ROOT.partial, NIX226_ROOT.lock, NIX226_ROOT.fixtures.lock and OUTDIR.
set -euo pipefail

usage() { echo "usage: $0 OUTDIR" >&2; exit 2; }
[ $# -eq 1 ] || usage
[ "$(id -u)" -eq 0 ] || { echo "$0: must run as root" >&2; exit 1; }

t_start=$(date +%s)
OUT=$1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

ROOT=${NIX226_ROOT:-/var/cache/hearth/trixie-nix}
case "$ROOT" in /*) ;; *) echo "$0: NIX226_ROOT must be absolute" >&2; exit 1;; esac
ROOT=${ROOT%/}
[ -n "$ROOT" ] && [ "$ROOT" != / ] || { echo "$0: refusing NIX226_ROOT=/" >&2; exit 1; }
FRESH_KEY=${FRESH_KEY:-0}
PIN_REGISTRATION_TIME=${PIN_REGISTRATION_TIME:-}

# Test-only signing key, made once with
#   nix-store --generate-binary-cache-key fixture-1 sk pk
# It signs nothing but these fixtures. Ed25519 signatures are deterministic,
# so a fixed key gives the same signature on every run.
FIXED_SK='fixture-1:HrDs5bZeDeXLdyDB9Gu9gau9dCXv+E59pXOYvR1fV0Dvn11/hN0bJZA8JQ+weDGY1ehUk1rGbg4IMKnr6UZsHA=='
FIXED_PK='fixture-1:759df4TdGyWQPCUPsHgxmNXoVJNaxm4OCDCp6+lGbBw='

# The paths these fixtures get on x86_64-linux (they depend only on the
# derivations below and the system type). Checked, not required.
EXPECT_A=/nix/store/zaxji58rbhwppqp46bc87qck9n7mlav9-fixture-a
EXPECT_B=/nix/store/mqz6xw1mxhxp9gr2yd4plnz00rmhvym5-fixture-b
EXPECT_CA=/nix/store/11zds9jm7x6i2pazh7232qc5z5d3r71m-fixture-ca
INVALID=/nix/store/00000000000000000000000000000000-gone

log() { printf '[regenerate] %s\n' "$*" >&2; }

# ---------------------------------------------------------------- 1. the root
"$(dirname "$0")/../../../scripts/nix-root.sh" "$ROOT"

# One run at a time per root (nix-root.sh takes the lock of its own: $ROOT.lock).
exec 9>"$ROOT.fixtures.lock"
flock 9

# Mount points below a directory, deepest first.
mounts_under() {
	awk -v d="$1" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/mounts | sort -r
}
# ---------------------------------------------------------------- mounts
# nix needs /proc (it reads /proc/self/exe) and a working /dev/pts (each build
# gets a pseudoterminal for its log). Mount only what is missing; undo it on exit.
MOUNTED=()
cleanup() {
	local i
	for (( i=${#MOUNTED[@]}-1; i>=0; i-- )); do
		umount "${MOUNTED[$i]}" 2>/dev/null || umount -l "${MOUNTED[$i]}" || true
	done
}
trap cleanup EXIT
if ! mountpoint -q "$ROOT/proc"; then
	mount -t proc proc "$ROOT/proc"; MOUNTED+=("$ROOT/proc")
fi
mkdir -p "$ROOT/dev/pts"
if ! mountpoint -q "$ROOT/dev/pts"; then
	mount --bind /dev/pts "$ROOT/dev/pts"; MOUNTED+=("$ROOT/dev/pts")
fi

# Run a command in the root with a clean environment and the local store.
inroot() {
	chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/usr/bin:/bin LANG=C.UTF-8 \
		NIX_REMOTE=local "$@"
}

version=$(inroot nix --version)
log "$version"
case "$version" in
	"nix (Nix) 2.26."*) ;;
	*) echo "$0: expected Nix 2.26.x in the root, got: $version" >&2; exit 1;;
esac

# ---------------------------------------------------------------- 2. the store
log "wiping the root's store and making it anew"
[ -z "$(mounts_under "$ROOT/nix")" ] || { echo "$0: something is mounted under $ROOT/nix" >&2; exit 1; }
rm -rf "$ROOT/nix" "$ROOT/root/.cache/nix" "$ROOT/root/.local/state/nix" \
	"$ROOT/root/.nix-defexpr" "$ROOT/root/.nix-profile" "$ROOT/var/tmp/fixtures"
mkdir -p "$ROOT/etc/nix" "$ROOT/var/tmp/fixtures"
cat > "$ROOT/etc/nix/nix.conf" <<'EOF'
build-users-group =
sandbox = false
substituters =
experimental-features = nix-command
EOF
inroot nix-store --init

W=/var/tmp/fixtures   # inside the root
cat > "$ROOT$W/fixtures.nix" <<'EOF'
# builder is the root's /bin/sh (dash), named by a plain string, so the
# derivations (and so the output paths) depend on nothing but this file and
# the system type. printf is a dash builtin.
let
  a = builtins.derivation {
    name = "fixture-a";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "printf 'fixture a\\n' > $out" ];
  };
  b = builtins.derivation {
    name = "fixture-b";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "printf 'fixture b refers to %s\\n' ${a} > $out" ];
  };
in { inherit a b; }
EOF
(umask 022; printf 'fixture ca\n' > "$ROOT$W/fixture-ca")

if [ "$FRESH_KEY" = 1 ]; then
	log "generating a fresh signing key"
	inroot nix-store --generate-binary-cache-key fixture-1 "$W/sk" "$W/pk"
else
	(umask 077; printf '%s' "$FIXED_SK" > "$ROOT$W/sk")
	printf '%s' "$FIXED_PK" > "$ROOT$W/pk"
	derived=$(inroot sh -c "nix key convert-secret-to-public < $W/sk")
	[ "$derived" = "$FIXED_PK" ] || { echo "$0: fixed key pair does not match" >&2; exit 1; }
fi

log "building fixture-a and fixture-b"
built_out=$(inroot nix-build --no-out-link "$W/fixtures.nix" -A a -A b)
mapfile -t built <<< "$built_out"
A=${built[0]:?}; B=${built[1]:?}
log "adding fixture-ca"
CA=$(inroot sh -c "cd $W && nix-store --add fixture-ca")
log "signing $B"
inroot nix store sign --key-file "$W/sk" "$B"

for p in A B CA; do
	want=EXPECT_$p
	[ "${!p}" = "${!want}" ] || log "note: $p is ${!p}, not ${!want} as on x86_64-linux"
done

if [ -n "$PIN_REGISTRATION_TIME" ]; then
	log "pinning registrationTime to $PIN_REGISTRATION_TIME"
	inroot perl -MDBI -e '
		my $db = DBI->connect("dbi:SQLite:dbname=/nix/var/nix/db/db.sqlite", "", "",
			{ RaiseError => 1, AutoCommit => 1 });
		$db->do("UPDATE ValidPaths SET registrationTime = ?", undef, $ARGV[0]);
		$db->disconnect;' "$PIN_REGISTRATION_TIME"
fi

# ---------------------------------------------------------------- 3. capture
log "capturing into $OUT"
inroot nix path-info --json "$A" "$B" "$CA" > "$OUT/nix-2.26.json"
inroot nix path-info --json --recursive "$B" > "$OUT/nix-2.26-recursive.json"
set +e
inroot nix path-info --json "$INVALID" "$B" \
	> "$OUT/nix-2.26-invalid.json" 2> "$OUT/nix-2.26-invalid.stderr"
echo $? > "$OUT/nix-2.26-invalid.exit"
set -e
{
	echo "$version"
	chroot "$ROOT" dpkg-query -W -f='${Package} ${Version} ${Architecture}\n' nix-bin
} > "$OUT/nix-2.26-version.txt"
cp "$ROOT$W/pk" "$OUT/fixture-1.pub"

log "A  = $A"
log "B  = $B"
log "CA = $CA"
log "invalid-path exit status: $(cat "$OUT/nix-2.26-invalid.exit")"
log "done in $(( $(date +%s) - t_start ))s"
