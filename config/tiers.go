package config

import (
	"fmt"
	"path/filepath"

	"github.com/BurntSushi/toml"

	"github.com/hearth-ci/hearth/nix"
)

// Tier names: a job on a protected ref (as its payload says) runs in the protected tier, every
// other job in the unprotected one.
const (
	TierProtected   = "protected"
	TierUnprotected = "unprotected"
	// TierShared is the one tier of a runner configured without [nix.tiers]: every job shares one
	// daemon and store, which is safe only when every job on the runner is trusted.
	TierShared = "shared"
)

// Tier is one trust level's Nix: a nix-daemon and the store it builds in. Jobs of one tier share
// the daemon and the store, so the store is warm for them; jobs of different tiers share neither,
// because a build can rewrite a path after the daemon registered it (CVE-2024-27297 and later
// descriptor-smuggling advisories), and a path one tier poisoned must never be what the other
// builds from, pushes or deploys.
type Tier struct {
	Name string `toml:"-"`
	// DaemonSocket is the host path of the tier's nix-daemon socket.
	DaemonSocket string `toml:"daemon_socket"`
	// StoreRoot is where the tier's store lives: "/" for the system store (/nix/store), or the
	// root of a store of its own, kept under StoreRoot/nix/store and seen by the tier's jobs as
	// /nix/store (the daemon runs with --store StoreRoot).
	StoreRoot string `toml:"store_root"`
	// GCRootsDir is where hearth roots, in this tier's store, what it needs: the environments'
	// store paths and, in the protected tier, what is queued for the cache.
	GCRootsDir string `toml:"gc_roots_dir"`
}

// System reports whether the tier's store is the system store.
func (t Tier) System() bool { return t.StoreRoot == "/" }

// StoreDir is the host directory holding the tier's store paths.
func (t Tier) StoreDir() string { return t.HostPath(nix.StoreDir) }

// HostPath is where a store path of this tier is on the host.
func (t Tier) HostPath(storePath string) string { return filepath.Join(t.StoreRoot, storePath) }

// Tiered reports whether protected and unprotected jobs have tiers of their own.
func (n Nix) Tiered() bool { return len(n.TierTables) > 0 }

// TierFor is the tier of a job on a protected ref or not.
func (n Nix) TierFor(protected bool) Tier {
	if !n.Tiered() {
		return Tier{Name: TierShared, DaemonSocket: n.DaemonSocket, StoreRoot: "/", GCRootsDir: n.GCRootsDir}
	}
	name := TierUnprotected
	if protected {
		name = TierProtected
	}
	t := n.TierTables[name]
	t.Name = name
	if t.GCRootsDir == "" {
		t.GCRootsDir = filepath.Join(t.StoreRoot, defaultGCRootsDir)
	}
	return t
}

// Trusted is the tier whose builds reach the binary cache and deploys: the protected one, or the
// only one. Its store is the system store.
func (n Nix) Trusted() Tier { return n.TierFor(true) }

// Tiers lists every tier, the trusted one first.
func (n Nix) Tiers() []Tier {
	if !n.Tiered() {
		return []Tier{n.TierFor(true)}
	}
	return []Tier{n.TierFor(true), n.TierFor(false)}
}

// defaultGCRootsDir is hearth's directory among a store's GC roots.
const defaultGCRootsDir = "/nix/var/nix/gcroots/hearth"

func (n Nix) validate(src []byte, md toml.MetaData) error {
	at := func(key ...string) string { return at(src, key...) }
	if !n.Tiered() {
		for _, p := range []struct{ key, val string }{{"daemon_socket", n.DaemonSocket}, {"gc_roots_dir", n.GCRootsDir}} {
			if !filepath.IsAbs(p.val) {
				return fmt.Errorf("%s = %q: must be an absolute path", at("nix", p.key), p.val)
			}
		}
		return nil
	}
	for _, key := range []string{"daemon_socket", "gc_roots_dir"} {
		if md.IsDefined("nix", key) {
			return fmt.Errorf("%s: with [nix.tiers] each tier names its own %s; remove it here", at("nix", key), key)
		}
	}
	for name := range n.TierTables {
		if name != TierProtected && name != TierUnprotected {
			return fmt.Errorf("%s: unknown tier %q: the tiers are %q and %q", at("nix", "tiers", name), name, TierProtected, TierUnprotected)
		}
	}
	for _, name := range []string{TierProtected, TierUnprotected} {
		if _, ok := n.TierTables[name]; !ok {
			return fmt.Errorf("%s: [nix.tiers.%s] is missing: with tiers, protected and unprotected jobs each need a daemon and store of their own (or remove [nix.tiers] to run every job in one shared tier)", at("nix", "tiers"), name)
		}
		t := n.TierFor(name == TierProtected)
		for _, p := range []struct{ key, val string }{{"daemon_socket", t.DaemonSocket}, {"store_root", t.StoreRoot}, {"gc_roots_dir", t.GCRootsDir}} {
			if p.val == "" {
				return fmt.Errorf("%s is missing", at("nix", "tiers", name, p.key))
			}
			if !filepath.IsAbs(p.val) {
				return fmt.Errorf("%s = %q: must be an absolute path", at("nix", "tiers", name, p.key), p.val)
			}
		}
	}
	p, u := n.TierFor(true), n.TierFor(false)
	if !p.System() {
		// The pusher and the deployer read store paths from the system store's file system.
		return fmt.Errorf("%s = %q: the protected tier's store is the system store, store_root = \"/\" (the unprotected tier is the one with a store of its own)", at("nix", "tiers", TierProtected, "store_root"), p.StoreRoot)
	}
	if u.System() || filepath.Clean(u.StoreRoot) == "/" {
		return fmt.Errorf("%s = %q: the unprotected tier needs a store of its own, apart from the system store: e.g. \"/var/lib/hearth/unprotected\"", at("nix", "tiers", TierUnprotected, "store_root"), u.StoreRoot)
	}
	if filepath.Clean(p.DaemonSocket) == filepath.Clean(u.DaemonSocket) {
		return fmt.Errorf("%s = %q is the protected tier's socket too: each tier needs a nix-daemon of its own", at("nix", "tiers", TierUnprotected, "daemon_socket"), u.DaemonSocket)
	}
	if filepath.Clean(p.GCRootsDir) == filepath.Clean(u.GCRootsDir) {
		return fmt.Errorf("%s = %q is the protected tier's too: each tier roots its paths in its own store", at("nix", "tiers", TierUnprotected, "gc_roots_dir"), u.GCRootsDir)
	}
	return nil
}

// Summary says in one line which Nix setup is in force.
func (n Nix) Summary() string {
	if !n.Tiered() {
		return fmt.Sprintf("one shared Nix tier: every job builds with the nix-daemon at %s and the system store (fit only for a runner whose every job is trusted; see [nix.tiers])", n.DaemonSocket)
	}
	p, u := n.TierFor(true), n.TierFor(false)
	return fmt.Sprintf("two Nix tiers: protected jobs build with the nix-daemon at %s and the system store, unprotected jobs with the nix-daemon at %s and the store in %s", p.DaemonSocket, u.DaemonSocket, u.StoreDir())
}
