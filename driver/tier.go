package driver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hearth-ci/hearth/config"
	"github.com/hearth-ci/hearth/nix/daemon"
)

// describeTier is the job-log line that says which Nix the job builds with and what it shares.
func describeTier(t config.Tier) string {
	switch t.Name {
	case config.TierProtected:
		return "Nix: the protected tier (its own nix-daemon and the system store, shared only with jobs on protected refs; what it builds reaches the binary cache)"
	case config.TierUnprotected:
		return "Nix: the unprotected tier (a nix-daemon and store shared only with jobs on unprotected refs; nothing built here reaches the binary cache or a deploy)"
	}
	return "Nix: one shared tier (every job on this runner shares one nix-daemon and store: fit only for a runner whose every job is trusted)"
}

// warnOldDaemon warns in the job log when the tier's nix-daemon is a Nix release that predates the
// fix of a known store-integrity advisory. It asks the daemon once after the daemon started (a new
// socket), in the first job then, not in every job; a daemon that does not answer is left to
// prepare to report.
func warnOldDaemon(ctx context.Context, log io.Writer, stateDir string, t config.Tier) {
	fi, err := os.Stat(t.DaemonSocket)
	if err != nil {
		return
	}
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	sum := sha256.Sum256(fmt.Appendf(nil, "%s\x00%d\x00%d", t.DaemonSocket, ino, fi.ModTime().UnixNano()))
	stamp := filepath.Join(stateDir, "daemons", hex.EncodeToString(sum[:12]))
	if _, err := os.Stat(stamp); err == nil {
		return
	}
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	info, err := daemon.Probe(pctx, t.DaemonSocket)
	if err != nil {
		return
	}
	if err := os.MkdirAll(filepath.Dir(stamp), 0o755); err != nil {
		return
	}
	f, err := os.OpenFile(stamp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return // another job got there first, and warned
	}
	fmt.Fprintf(f, "%s %s\n", t.DaemonSocket, info.Version)
	f.Close()
	if info.Version == "" {
		warning(log, "the %s tier's nix-daemon (%s) speaks worker protocol %s and does not say its version: it is older than every Nix that has fixed a known store-integrity advisory. Update Nix on this host.", t.Name, t.DaemonSocket, info.Protocol)
		return
	}
	if found := daemon.Vulnerable(info.Version); len(found) > 0 {
		warning(log, "the %s tier's nix-daemon (%s) runs Nix %s, which predates the fix of %s. Update Nix on this host.", t.Name, t.DaemonSocket, info.Version, daemon.Describe(found))
	}
}
