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
	e := d.parts
	h := filepath.Join(e.Dir, "hearth")
	if !strings.Contains(tables, "[cache.file]") {
		tables += fmt.Sprintf("\n[cache.file]\ndir = %q\n", e.FileCacheDir())
	}
	return fmt.Sprintf(`[containerd]
address = %q
namespace = "hearth-test"

[nix]
daemon_socket = %q

[jobs]
builds_root = %q
cache_root = %q
state_dir = %q
%s
[environments.default]
store_path = %q

[cache]
queue_dir = %q
%s
%s`, e.ContainerdSocket, d.NixSocket, filepath.Join(h, "builds"), filepath.Join(h, "cache"), filepath.Join(h, "state"), jobs, e.Environment,
		d.QueueDir(), cache, tables)
}

// FileCacheDir is the file cache of configs whose [cache] says nothing else.
func (e *Parts) FileCacheDir() string { return filepath.Join(e.Dir, "hearth", "binary-cache") }

// WriteConfig writes Config(jobs, cache, tables) to a new file under Dir and returns its path.
func (d *Daemon) WriteConfig(jobs, cache, tables string) (string, error) {
	f, err := os.CreateTemp(d.parts.Dir, "config-*.toml")
	if err != nil {
		return "", err
	}
	defer f.Close()
	if _, err := f.WriteString(d.Config(jobs, cache, tables)); err != nil {
		return "", err
	}
	return f.Name(), nil
}

// StateDir, BuildsRoot are where configs from Config keep job state and builds dirs.
func (e *Parts) StateDir() string   { return filepath.Join(e.Dir, "hearth", "state") }
func (e *Parts) BuildsRoot() string { return filepath.Join(e.Dir, "hearth", "builds") }
