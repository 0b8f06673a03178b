package testenv

import (
	"fmt"
	"os"
	"path/filepath"
)

// Config returns a hearth config for this environment: its containerd and nix-daemon, dirs under
// Dir/hearth, and a default environment pointing at Environment. jobs is added to the [jobs] table;
// tables is appended at the end (more [environments.NAME], say).
func (e *Env) Config(jobs, tables string) string {
	h := filepath.Join(e.Dir, "hearth")
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
%s`, e.ContainerdSocket, e.NixSocket, filepath.Join(h, "builds"), filepath.Join(h, "cache"), filepath.Join(h, "state"), jobs, e.Environment, tables)
}

// WriteConfig writes Config(jobs, tables) to a new file under Dir and returns its path.
func (e *Env) WriteConfig(jobs, tables string) (string, error) {
	f, err := os.CreateTemp(e.Dir, "config-*.toml")
	if err != nil {
		return "", err
	}
	defer f.Close()
	if _, err := f.WriteString(e.Config(jobs, tables)); err != nil {
		return "", err
	}
	return f.Name(), nil
}

// StateDir, BuildsRoot are where configs from Config keep job state and builds dirs.
func (e *Env) StateDir() string   { return filepath.Join(e.Dir, "hearth", "state") }
func (e *Env) BuildsRoot() string { return filepath.Join(e.Dir, "hearth", "builds") }
