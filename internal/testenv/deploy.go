package testenv

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/hearth-ci/hearth/internal/testenv/sshtarget"
	"github.com/hearth-ci/hearth/nix/signing"
)

// CachePort is where a DeployCache listens on each target's host address.
const CachePort = 8080

// DeployCache is a signed file cache that a fleet's targets pull from: hearth pushes to Dir with
// KeyFile, and each target is served it on its host address and trusts PublicKey. The targets'
// nix.conf names no other substituter (they reach nothing else).
type DeployCache struct {
	Dir, KeyFile, PublicKey string
	*sshtarget.Served
}

// ServeCache makes a DeployCache under dir for fleet's targets. Close stops its servers.
func ServeCache(fleet *sshtarget.Fleet, dir string) (*DeployCache, error) {
	key, err := signing.Generate("hearth-test-deploy-1")
	if err != nil {
		return nil, err
	}
	c := &DeployCache{Dir: filepath.Join(dir, "cache"), KeyFile: filepath.Join(dir, "cache.secret"), PublicKey: key.Public().String()}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(c.KeyFile, []byte(key.String()), 0o600); err != nil {
		return nil, err
	}
	for _, t := range fleet.Targets() {
		if err := t.WriteFile("/etc/nix/nix.conf", []byte("build-users-group =\nsandbox = false\nsubstituters =\n"), 0o644); err != nil {
			return nil, err
		}
	}
	if c.Served, err = fleet.ServeDir(c.Dir, CachePort); err != nil {
		return nil, err
	}
	return c, nil
}

// Tables are the [cache.file] table pushing to the cache and, for each target of fleet, a
// [deploy.targets.NAME] table admitting projects that pulls from it, with extra(NAME)'s lines.
func (c *DeployCache) Tables(fleet *sshtarget.Fleet, projects string, extra func(name string) string) string {
	tables := fmt.Sprintf("\n[cache.file]\ndir = %q\nsigning_key_file = %q\n", c.Dir, c.KeyFile)
	for _, t := range fleet.Targets() {
		more := ""
		if extra != nil {
			more = extra(t.Name)
		}
		tables += fmt.Sprintf("\n[deploy.targets.%s]\nhost = %q\nknown_hosts_file = %q\nidentity_file = %q\nprojects = %s\nsubstituters = [\"http://%s:%d\"]\ntrusted_public_keys = [%q]\n%s\n",
			t.Name, t.Addr, t.KnownHosts, fleet.Identity, projects, t.HostAddr, CachePort, c.PublicKey, more)
	}
	return tables
}
