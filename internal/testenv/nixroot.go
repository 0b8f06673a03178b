package testenv

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// NixRootEnv names a root directory with another Nix in it — Debian 13's nix-bin 2.26, made by
// scripts/nix-root.sh — whose nix-daemon then serves every daemon the environment starts, on a
// store of its own: the system store at /nix must be one this process's mount namespace was
// given for the purpose (./scripts/test.sh does that), never the host's. Clients — hearth's
// store queries, the tests' own commands and the jobs' nix — stay Debian 12's 2.8.
const NixRootEnv = "HEARTH_TEST_NIX_ROOT"

// inRootScript runs a command with ROOT as its root directory, by pivot_root in the mount
// namespace `unshare --mount` gave it, seeing the store at /nix and the temporary directory DIR
// (where the environment and the tests keep hooks, configs and stores) at the same path as the
// host. pivot_root rather than chroot: the kernel refuses user
// namespaces to a chrooted process, and Nix 2.26 then builds without one, unlike on a host.
const inRootScript = `#!/bin/sh
# in-nix-root ROOT DIR CMD...
set -e
root=$1 dir=$2
shift 2
mount --bind "$root" "$root"
mount --rbind /nix "$root/nix"
mkdir -p "$root$dir"
mount --rbind "$dir" "$root$dir"
mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc"
# The host's build users and groups, which the daemons' nix.conf names.
mount --bind /etc/passwd "$root/etc/passwd"
mount --bind /etc/group "$root/etc/group"
cd "$root"
mkdir -p .oldroot
pivot_root . .oldroot
umount -l /.oldroot
exec "$@"
`

// useNixRoot checks the root NixRootEnv names and writes the script daemons start through.
func (e *Parts) useNixRoot(root string) error {
	if !filepath.IsAbs(root) {
		return fmt.Errorf("%s=%s: give an absolute path", NixRootEnv, root)
	}
	if _, err := os.Stat(filepath.Join(root, "usr", "bin", "nix-daemon")); err != nil {
		return fmt.Errorf("%s=%s has no usr/bin/nix-daemon: make the root with scripts/nix-root.sh", NixRootEnv, root)
	}
	mounted, err := isMountPoint("/nix")
	if err != nil {
		return err
	}
	if !mounted {
		return fmt.Errorf("%s is set but /nix is the host's own: run the tests through ./scripts/test.sh, which gives them a store of their own in a mount namespace", NixRootEnv)
	}
	script := filepath.Join(e.Dir, "bin", "in-nix-root")
	if err := os.MkdirAll(filepath.Dir(script), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(script, []byte(inRootScript), 0o755); err != nil {
		return err
	}
	e.nixRoot = []string{"unshare", "--mount", "--propagation", "private", script, root, os.TempDir()}
	return nil
}

// isMountPoint says whether dir is the mount point of a mount of this process's namespace.
func isMountPoint(dir string) (bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if fields := strings.Fields(s.Text()); len(fields) > 4 && fields[4] == dir {
			return true, nil
		}
	}
	return false, s.Err()
}
