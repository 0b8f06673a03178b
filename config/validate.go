package config

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/bmatcuk/doublestar/v4"

	"github.com/hearth-ci/hearth/jobcontainer"
	"github.com/hearth-ci/hearth/nix"
)

func (c *Config) validate(src []byte, md toml.MetaData) error {
	at := func(key ...string) string { return at(src, key...) }
	for _, p := range []struct {
		key []string
		val string
	}{
		{[]string{"containerd", "address"}, c.Containerd.Address},
		{[]string{"jobs", "builds_root"}, c.Jobs.BuildsRoot},
		{[]string{"jobs", "cache_root"}, c.Jobs.CacheRoot},
		{[]string{"jobs", "state_dir"}, c.Jobs.StateDir},
	} {
		if !filepath.IsAbs(p.val) {
			return fmt.Errorf("%s = %q: must be an absolute path", at(p.key...), p.val)
		}
	}
	if err := c.Nix.validate(src, md); err != nil {
		return err
	}
	if c.Containerd.Namespace == "" {
		return fmt.Errorf("%s is empty: name the containerd namespace for job containers", at("containerd", "namespace"))
	}
	switch c.Jobs.Network {
	case "bridge":
		if err := c.Jobs.Bridge.validate(at); err != nil {
			return err
		}
	case "host", "none":
	default:
		return fmt.Errorf("%s = %q: must be \"bridge\", \"host\" or \"none\"", at("jobs", "network"), c.Jobs.Network)
	}
	if c.Jobs.UIDMapStart == 0 {
		return fmt.Errorf("%s = 0: jobs must not run as host root; pick an unused host uid range, e.g. 1073741824", at("jobs", "uid_map_start"))
	}
	if c.Jobs.UIDMapSize == 0 {
		return fmt.Errorf("%s = 0: the container needs at least uid 0 mapped; 65536 is usual", at("jobs", "uid_map_size"))
	}
	if uint64(c.Jobs.UIDMapStart)+uint64(c.Jobs.UIDMapSize) > 1<<32-1 {
		return fmt.Errorf("%s + uid_map_size goes past the largest uid", at("jobs", "uid_map_start"))
	}
	if c.Jobs.StopTimeout <= 0 || c.Jobs.StopTimeout.Std() > 6*time.Second {
		return fmt.Errorf("%s = %q: must be between 0 and 6s: gitlab-runner expects a stage to end within 10 s of SIGTERM", at("jobs", "stop_timeout"), c.Jobs.StopTimeout.Std())
	}
	if err := c.Jobs.validateLimits(at); err != nil {
		return err
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
	if err := c.Cache.validate(at); err != nil {
		return err
	}
	if err := c.Metrics.validate(at); err != nil {
		return err
	}
	return c.Deploy.validate(at)
}

func (m Metrics) validate(at func(key ...string) string) error {
	if m.Listen == "" {
		return nil
	}
	if _, err := netip.ParseAddrPort(m.Listen); err != nil {
		return fmt.Errorf("%s = %q: must be an IP address and a port, e.g. \"127.0.0.1:9863\" (%v)", at("metrics", "listen"), m.Listen, err)
	}
	return nil
}

// CacheBackends are the values [cache] backend may take.
var CacheBackends = []string{"file", "s3", "attic"}

func (c Cache) validate(at func(key ...string) string) error {
	switch c.Push {
	case "always", "protected", "never":
	default:
		return fmt.Errorf("%s = %q: must be \"always\", \"protected\" or \"never\"", at("cache", "push"), c.Push)
	}
	if !filepath.IsAbs(c.QueueDir) {
		return fmt.Errorf("%s = %q: must be an absolute path", at("cache", "queue_dir"), c.QueueDir)
	}
	if c.Uploads < 1 || c.Uploads > 64 {
		return fmt.Errorf("%s = %d: must be between 1 and 64", at("cache", "jobs"), c.Uploads)
	}
	absOrEmpty := func(val string, key ...string) error {
		if val != "" && !filepath.IsAbs(val) {
			return fmt.Errorf("%s = %q: must be an absolute path", at(key...), val)
		}
		return nil
	}
	required := func(val string, key ...string) error {
		if val == "" {
			return fmt.Errorf("%s is not set, and the %q backend needs it", at(key...), c.Backend)
		}
		return nil
	}
	var errs []error
	switch c.Backend {
	case "file":
		errs = append(errs, required(c.File.Dir, "cache", "file", "dir"), absOrEmpty(c.File.Dir, "cache", "file", "dir"),
			absOrEmpty(c.File.SigningKeyFile, "cache", "file", "signing_key_file"))
	case "s3":
		errs = append(errs, required(c.S3.Bucket, "cache", "s3", "bucket"), required(c.S3.Region, "cache", "s3", "region"),
			required(c.S3.AccessKeyIDFile, "cache", "s3", "access_key_id_file"), required(c.S3.SecretAccessKeyFile, "cache", "s3", "secret_access_key_file"),
			absOrEmpty(c.S3.AccessKeyIDFile, "cache", "s3", "access_key_id_file"), absOrEmpty(c.S3.SecretAccessKeyFile, "cache", "s3", "secret_access_key_file"),
			absOrEmpty(c.S3.SigningKeyFile, "cache", "s3", "signing_key_file"))
		if c.S3.Endpoint != "" && !strings.HasPrefix(c.S3.Endpoint, "http://") && !strings.HasPrefix(c.S3.Endpoint, "https://") {
			errs = append(errs, fmt.Errorf("%s = %q: must be an http:// or https:// URL", at("cache", "s3", "endpoint"), c.S3.Endpoint))
		}
	case "attic":
		errs = append(errs, required(c.Attic.Endpoint, "cache", "attic", "endpoint"), required(c.Attic.Cache, "cache", "attic", "cache"),
			required(c.Attic.TokenFile, "cache", "attic", "token_file"), absOrEmpty(c.Attic.TokenFile, "cache", "attic", "token_file"))
		if c.Attic.Endpoint != "" && !strings.HasPrefix(c.Attic.Endpoint, "http://") && !strings.HasPrefix(c.Attic.Endpoint, "https://") {
			errs = append(errs, fmt.Errorf("%s = %q: must be an http:// or https:// URL", at("cache", "attic", "endpoint"), c.Attic.Endpoint))
		}
	default:
		return fmt.Errorf("%s = %q: must be one of %s", at("cache", "backend"), c.Backend, strings.Join(CacheBackends, ", "))
	}
	for _, err := range errs {
		if err != nil {
			return err
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
	case e.StorePath != "":
		if err := nix.CheckStorePath(e.StorePath); err != nil {
			return fmt.Errorf("store_path: %w", err)
		}
	}
	_, err := e.ParsedMounts()
	return err
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
		for _, r := range jobcontainer.Reserved {
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

func (b Bridge) validate(at func(key ...string) string) error {
	if !bridgeName.MatchString(b.Name) {
		return fmt.Errorf("%s = %q: a network device name of 1 to 15 letters, digits, '-' or '_'", at("jobs", "bridge", "name"), b.Name)
	}
	p, err := netip.ParsePrefix(b.Subnet)
	if err != nil || !p.Addr().Is4() || p.Bits() > 28 || p.Masked() != p {
		return fmt.Errorf("%s = %q: an IPv4 subnet such as \"10.217.0.0/16\", /28 or larger, written at its first address", at("jobs", "bridge", "subnet"), b.Subnet)
	}
	if p.Overlaps(netip.MustParsePrefix("169.254.0.0/16")) || p.Overlaps(netip.MustParsePrefix("127.0.0.0/8")) {
		return fmt.Errorf("%s = %q: pick a private range, not loopback or link-local addresses", at("jobs", "bridge", "subnet"), b.Subnet)
	}
	for _, d := range b.DNS {
		a, err := netip.ParseAddr(d)
		if err != nil || !a.Is4() || a.IsLoopback() || a.IsLinkLocalUnicast() {
			return fmt.Errorf("%s: %q is not a name server a job can reach: give an IPv4 address that is neither loopback nor link-local", at("jobs", "bridge", "dns"), d)
		}
	}
	if len(b.PluginDirs) == 0 {
		return fmt.Errorf("%s is empty: name where the CNI plugins are (Debian: /usr/lib/cni)", at("jobs", "bridge", "plugin_dirs"))
	}
	return nil
}

var bridgeName = regexp.MustCompile(`^[A-Za-z0-9_-]{1,15}$`)
