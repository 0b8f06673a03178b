package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Config returns a hearth config for this environment: its containerd and nix-daemon, dirs under
// Dir/hearth, a default environment pointing at Environment, and a file cache under Dir/hearth fed
// by the daemon's post-build-hook. jobs is added to the [jobs] table and cache to the [cache]
// table; tables is appended at the end (more [environments.NAME], say, or [cache.s3]).
func (e *Parts) Config(jobs, cache, tables string) string {
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
%s`, e.ContainerdSocket, e.NixSocket, filepath.Join(h, "builds"), filepath.Join(h, "cache"), filepath.Join(h, "state"), jobs, e.Environment,
		e.QueueDir(), cache, tables)
}

// QueueDir is where the daemon's post-build-hook queues built paths.
func (e *Parts) QueueDir() string { return filepath.Join(e.Dir, "hearth", "queue") }

// FileCacheDir is the file cache of configs whose [cache] says nothing else.
func (e *Parts) FileCacheDir() string { return filepath.Join(e.Dir, "hearth", "binary-cache") }

// WriteConfig writes Config(jobs, cache, tables) to a new file under Dir and returns its path.
func (e *Parts) WriteConfig(jobs, cache, tables string) (string, error) {
	f, err := os.CreateTemp(e.Dir, "config-*.toml")
	if err != nil {
		return "", err
	}
	defer f.Close()
	if _, err := f.WriteString(e.Config(jobs, cache, tables)); err != nil {
		return "", err
	}
	return f.Name(), nil
}

// StateDir, BuildsRoot are where configs from Config keep job state and builds dirs.
func (e *Parts) StateDir() string   { return filepath.Join(e.Dir, "hearth", "state") }
func (e *Parts) BuildsRoot() string { return filepath.Join(e.Dir, "hearth", "builds") }
