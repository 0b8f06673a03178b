package executor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/hearth-ci/hearth/config"
	"github.com/hearth-ci/hearth/nixstore"
)

// environmentRoots is the directory, among a tier's GC roots, that keeps the environments alive:
// a job may run nix-store --gc, and without a root the next job would find its environment gone.
func environmentRoots(t config.Tier) string { return filepath.Join(t.GCRootsDir, "environments") }

// environmentIn makes sure the store-path environment is in the tier's store, with its whole
// closure, and rooted there. The system store has it already (the host built it); another tier's
// store gets a copy from the system store once, by the first of its jobs that needs it.
func (e *Executor) environmentIn(ctx context.Context, tier config.Tier, env Environment, log io.Writer) error {
	root := filepath.Join(environmentRoots(tier), filepath.Base(env.StorePath))
	ready := func() bool {
		_, err := os.Stat(tier.HostPath(env.StorePath))
		return err == nil && rooted(root, env.StorePath)
	}
	if ready() {
		return nil
	}
	unlock, err := e.lock(ctx, "tier-"+tier.Name+"-"+env.StorePath)
	if err != nil {
		return err
	}
	defer unlock()
	if ready() { // another prepare got there first
		return nil
	}
	if tier.System() {
		if _, err := os.Stat(env.StorePath); err != nil {
			return envError(env, fmt.Errorf("environment %s: store path %s is not in the store (build it on this host, or fix store_path): %w", env.Name, env.StorePath, err))
		}
		return makeRoot(root, env.StorePath)
	}
	if _, err := os.Stat(env.StorePath); err != nil {
		return envError(env, fmt.Errorf("environment %s: store path %s is not in the system store, which the %s tier's copy comes from (build it on this host, or fix store_path): %w", env.Name, env.StorePath, tier.Name, err))
	}
	// A root under another name holds the closure while it is copied, so that a collection in the
	// tier's store cannot take half of it; the final name says the copy is complete.
	copying := root + ".copying"
	if err := makeRoot(copying, env.StorePath); err != nil {
		return err
	}
	defer os.Remove(copying)
	fmt.Fprintf(log, "Copying environment %s into the %s tier's store (once per environment)\n", env.Name, tier.Name)
	if err := e.systemStore().CopyTo(ctx, tier.DaemonSocket, env.StorePath); err != nil {
		return fmt.Errorf("copy environment %s into the %s tier's store (is its nix-daemon at %s running, with root among its trusted users?): %w", env.Name, tier.Name, tier.DaemonSocket, err)
	}
	return makeRoot(root, env.StorePath)
}

// systemStore is the store environments are built in: the trusted tier's.
func (e *Executor) systemStore() *nixstore.Store {
	return nixstore.Daemon(e.cfg.Nix.Trusted().DaemonSocket)
}

func rooted(root, target string) bool {
	t, err := os.Readlink(root)
	return err == nil && t == target
}

// makeRoot points the GC root link at target, replacing whatever had the name.
func makeRoot(link, target string) error {
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		return fmt.Errorf("make GC roots dir: %w", err)
	}
	tmp := link + ".new"
	os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return fmt.Errorf("root %s: %w", target, err)
	}
	if err := os.Rename(tmp, link); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("root %s: %w", target, err)
	}
	return nil
}

// gcEnvironmentRoots removes, in every tier, the roots of environments no longer configured, so
// that their closures can be collected.
func (e *Executor) gcEnvironmentRoots(log io.Writer) error {
	var keep []string
	for _, env := range e.cfg.Environments {
		if env.StorePath != "" {
			keep = append(keep, filepath.Base(env.StorePath))
		}
	}
	for _, tier := range e.cfg.Nix.Tiers() {
		dir := environmentRoots(tier)
		ents, err := os.ReadDir(dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read GC roots of the %s tier: %w", tier.Name, err)
		}
		for _, ent := range ents {
			// .copying and .new roots are a copy or a rename in progress.
			if slices.Contains(keep, ent.Name()) || ent.Type()&fs.ModeSymlink == 0 || strings.HasSuffix(ent.Name(), ".copying") || strings.HasSuffix(ent.Name(), ".new") {
				continue
			}
			if err := os.Remove(filepath.Join(dir, ent.Name())); err != nil {
				return fmt.Errorf("remove GC root: %w", err)
			}
			fmt.Fprintf(log, "removed the %s tier's root of environment path %s (no longer configured)\n", tier.Name, ent.Name())
		}
	}
	return nil
}
