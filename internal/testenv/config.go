package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Config returns a hearth config for this environment and daemon: the environment's containerd,
// the daemon and its queue, dirs under Dir/hearth, a default environment pointing at Environment,
// and a file cache under Dir/hearth. jobs is added to the [jobs] table and cache to the [cache]
// table; tables is appended at the end (more [environments.NAME], say, or [cache.s3]).
func (d *Daemon) Config(jobs, cache, tables string) string {
	return d.config(fmt.Sprintf("[nix]\ndaemon_socket = %q\ngc_roots_dir = %q\n", d.NixSocket, d.parts.GCRoots), jobs, cache, tables)
}

// TieredConfig is Config with two trust tiers: d (on the system store) for protected jobs, and u
// (a daemon from NewTierDaemon, on a store of its own) for the others.
func (d *Daemon) TieredConfig(u *Daemon, jobs, cache, tables string) string {
	nix := fmt.Sprintf("[nix.tiers.protected]\ndaemon_socket = %q\nstore_root = \"/\"\ngc_roots_dir = %q\n\n[nix.tiers.unprotected]\ndaemon_socket = %q\nstore_root = %q\n",
		d.NixSocket, d.parts.GCRoots, u.NixSocket, u.StoreRoot)
	return d.config(nix, jobs, cache, tables)
}

func (d *Daemon) config(nix, jobs, cache, tables string) string {
	e := d.parts
	// jobs may name a builds_root of its own; a key may appear once.
	buildsRoot := fmt.Sprintf("builds_root = %q", filepath.Join(e.Dir, "hearth", "builds"))
	if strings.Contains(jobs, "builds_root =") {
		buildsRoot = ""
	}
	h := filepath.Join(e.Dir, "hearth")
	if !strings.Contains(tables, "[cache.file]") {
		tables += fmt.Sprintf("\n[cache.file]\ndir = %q\n", e.FileCacheDir())
	}
	return fmt.Sprintf(`[containerd]
address = %q
namespace = "hearth-test"

%s
[jobs]
%s
cache_root = %q
state_dir = %q
%s
[jobs.bridge]
name = %q
subnet = %q
dns = [%s]

[environments.default]
store_path = %q

[cache]
queue_dir = %q
%s
%s`, e.ContainerdSocket, nix, buildsRoot, filepath.Join(h, "cache"), filepath.Join(h, "state"), jobs,
		e.Bridge, e.BridgeSubnet, quoted(e.BridgeDNS), e.Environment,
		d.QueueDir(), cache, tables)
}

// FileCacheDir is the file cache of configs whose [cache] says nothing else.
func (e *Parts) FileCacheDir() string { return filepath.Join(e.Dir, "hearth", "binary-cache") }

// WriteConfig writes Config(jobs, cache, tables) to a new file under Dir and returns its path.
func (d *Daemon) WriteConfig(jobs, cache, tables string) (string, error) {
	return d.parts.writeConfig(d.Config(jobs, cache, tables))
}

// WriteTieredConfig writes TieredConfig(u, jobs, cache, tables) to a new file under Dir and
// returns its path.
func (d *Daemon) WriteTieredConfig(u *Daemon, jobs, cache, tables string) (string, error) {
	return d.parts.writeConfig(d.TieredConfig(u, jobs, cache, tables))
}

func (e *Parts) writeConfig(text string) (string, error) {
	f, err := os.CreateTemp(e.Dir, "config-*.toml")
	if err != nil {
		return "", err
	}
	defer f.Close()
	if _, err := f.WriteString(text); err != nil {
		return "", err
	}
	return f.Name(), nil
}

// StateDir, BuildsRoot are where configs from Config keep job state and builds dirs.
func (e *Parts) StateDir() string   { return filepath.Join(e.Dir, "hearth", "state") }
func (e *Parts) BuildsRoot() string { return filepath.Join(e.Dir, "hearth", "builds") }

func quoted(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}
