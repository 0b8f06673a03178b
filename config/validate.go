package config

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"github.com/bmatcuk/doublestar/v4"
)

// reservedTargets are container paths hearth mounts itself; an environment's extra mounts may not
// cover or replace them.
var reservedTargets = []string{"/", "/nix/store", "/nix/var/nix/daemon-socket", "/builds", "/cache", "/.hearth", "/proc", "/dev", "/sys", "/tmp", "/root", "/etc/hosts", "/etc/resolv.conf", "/etc/passwd", "/etc/group"}

func (c *Config) validate(src []byte) error {
	at := func(key ...string) string {
		return fmt.Sprintf("line %d: %s", locateKey(src, key), strings.Join(key, "."))
	}
	for _, p := range []struct {
		key []string
		val string
	}{
		{[]string{"containerd", "address"}, c.Containerd.Address},
		{[]string{"nix", "daemon_socket"}, c.Nix.DaemonSocket},
		{[]string{"jobs", "builds_root"}, c.Jobs.BuildsRoot},
		{[]string{"jobs", "cache_root"}, c.Jobs.CacheRoot},
		{[]string{"jobs", "state_dir"}, c.Jobs.StateDir},
	} {
		if !filepath.IsAbs(p.val) {
			return fmt.Errorf("%s = %q: must be an absolute path", at(p.key...), p.val)
		}
	}
	if c.Containerd.Namespace == "" {
		return fmt.Errorf("%s is empty: name the containerd namespace for job containers", at("containerd", "namespace"))
	}
	switch c.Jobs.Network {
	case "host", "none":
	default:
		return fmt.Errorf("%s = %q: must be \"host\" or \"none\"", at("jobs", "network"), c.Jobs.Network)
	}
	if c.Jobs.UIDMapStart == 0 {
		return fmt.Errorf("%s = 0: jobs must not run as host root; pick an unused host uid range, e.g. 100000", at("jobs", "uid_map_start"))
	}
	if c.Jobs.UIDMapSize == 0 {
		return fmt.Errorf("%s = 0: the container needs at least uid 0 mapped; 65536 is usual", at("jobs", "uid_map_size"))
	}
	if uint64(c.Jobs.UIDMapStart)+uint64(c.Jobs.UIDMapSize) > 1<<32-1 {
		return fmt.Errorf("%s + uid_map_size goes past the largest uid", at("jobs", "uid_map_start"))
	}
	if c.Jobs.StopTimeout <= 0 {
		return fmt.Errorf("%s must be a positive duration such as \"5s\"", at("jobs", "stop_timeout"))
	}
	for _, g := range c.Jobs.AllowedImages {
		if !doublestar.ValidatePattern(g) {
			return fmt.Errorf("%s: %q is not a valid glob", at("jobs", "allowed_images"), g)
		}
	}
	if len(c.Environments) == 0 {
		return fmt.Errorf("no [environments.NAME] table: define at least the default environment %q", c.Jobs.DefaultEnvironment)
	}
	if _, ok := c.Environments[c.Jobs.DefaultEnvironment]; !ok {
		return fmt.Errorf("%s = %q names no environment; defined: %s", at("jobs", "default_environment"), c.Jobs.DefaultEnvironment, strings.Join(c.EnvironmentNames(), ", "))
	}
	for _, name := range c.EnvironmentNames() {
		if err := c.Environments[name].validate(); err != nil {
			return fmt.Errorf("%s: %w", at("environments", name), err)
		}
	}
	return nil
}

func (e Environment) validate() error {
	switch {
	case e.StorePath == "" && e.Image == "":
		return fmt.Errorf("set store_path (a Nix store path whose bin/ goes on PATH) or image (an OCI reference)")
	case e.StorePath != "" && e.Image != "":
		return fmt.Errorf("set store_path or image, not both")
	case e.StorePath != "" && !IsStorePath(e.StorePath):
		return fmt.Errorf("store_path %q is not a path directly under /nix/store", e.StorePath)
	}
	_, err := e.ParsedMounts()
	return err
}

// IsStorePath reports whether p names a top-level entry of /nix/store.
func IsStorePath(p string) bool {
	rest, ok := strings.CutPrefix(p, "/nix/store/")
	return ok && rest != "" && !strings.Contains(rest, "/") && rest != "." && rest != ".."
}

// ParsedMounts splits each "host:container" entry and checks it.
func (e Environment) ParsedMounts() ([]Mount, error) {
	var out []Mount
	for _, m := range e.Mounts {
		host, ctr, ok := strings.Cut(m, ":")
		if !ok || !filepath.IsAbs(host) || !filepath.IsAbs(ctr) {
			return nil, fmt.Errorf("mount %q: write it as \"/host/path:/container/path\", both absolute", m)
		}
		ctr = filepath.Clean(ctr)
		for _, r := range reservedTargets {
			if ctr == r || (r != "/" && strings.HasPrefix(ctr+"/", r+"/")) || strings.HasPrefix(r, ctr+"/") {
				return nil, fmt.Errorf("mount %q: %s is managed by hearth; mount somewhere else", m, r)
			}
		}
		out = append(out, Mount{Host: filepath.Clean(host), Container: ctr})
	}
	return out, nil
}

// EnvironmentNames lists the environments in a stable order.
func (c *Config) EnvironmentNames() []string {
	names := make([]string, 0, len(c.Environments))
	for n := range c.Environments {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
