package config

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"
)

// Deploy says where successful protected jobs may deploy NixOS systems, and how.
type Deploy struct {
	// Parallel is how many targets one job deploys to at once.
	Parallel int `toml:"parallel"`
	// ConfirmTimeout is how long a target's watchdog waits, after activation, for hearth to confirm
	// over a new connection (and the health checks to pass) before it rolls back by itself.
	ConfirmTimeout Duration `toml:"confirm_timeout"`
	// ActivationTimeout bounds switch-to-configuration; a hung activation is stopped and rolled back.
	ActivationTimeout Duration `toml:"activation_timeout"`
	// OnUnitFailure is "rollback" or "keep": what to do when switch-to-configuration exits 4
	// (the new system is active but some units failed).
	OnUnitFailure string `toml:"on_unit_failure"`
	// GCRootsDir holds the GC roots that keep a system being deployed alive on this host.
	GCRootsDir string `toml:"gc_roots_dir"`
	// Targets are the servers, by name; a job names one by its .hearth/deploy/NAME link.
	Targets map[string]Target `toml:"targets"`
}

// Target is one server a job may deploy to.
type Target struct {
	Host string `toml:"host"`
	Port int    `toml:"port"`
	// User is root, or a user allowed to run hearth-deploy-target through sudo without a password.
	User string `toml:"user"`
	// KnownHostsFile pins the target's host key; it is required.
	KnownHostsFile string `toml:"known_hosts_file"`
	IdentityFile   string `toml:"identity_file"`
	// Projects are the GitLab project ids ("42") and paths ("group/project") allowed to deploy here.
	Projects []string `toml:"projects"`
	// Refs, when set, are the only refs that may deploy here.
	Refs []string `toml:"refs"`
	// Action is "switch", "boot" or "test".
	Action string `toml:"action"`
	// Substituters and TrustedPublicKeys are added to what the target pulls from and trusts.
	Substituters      []string `toml:"substituters"`
	TrustedPublicKeys []string `toml:"trusted_public_keys"`
	// Transfer is "pull" (the target substitutes from its caches, and what it cannot find is sent
	// over SSH) or "push" (everything missing is sent over SSH).
	Transfer      string        `toml:"transfer"`
	HealthChecks  []HealthCheck `toml:"health_checks"`
	HealthTimeout Duration      `toml:"health_timeout"`
	// Canary targets go first, alone; at most one target is a canary.
	Canary bool `toml:"canary"`
}

// HealthCheck is a command run on the target, or a URL fetched from the runner host.
type HealthCheck struct {
	Command string `toml:"command"`
	URL     string `toml:"url"`
	// Status is the HTTP status the URL must answer with; 0 means any 2xx.
	Status int `toml:"status"`
}

// The values [deploy.targets.NAME] action, transfer and [deploy] on_unit_failure may take.
var (
	DeployActions   = []string{"switch", "boot", "test"}
	DeployTransfers = []string{"pull", "push"}
	UnitFailures    = []string{"rollback", "keep"}
)

func defaultDeploy() Deploy {
	return Deploy{
		Parallel:          4,
		ConfirmTimeout:    Duration(30 * time.Second),
		ActivationTimeout: Duration(5 * time.Minute),
		OnUnitFailure:     "rollback",
		GCRootsDir:        "/nix/var/nix/gcroots/hearth",
	}
}

// targetDefaults fills what a target's table leaves out.
func (t *Target) applyDefaults() {
	if t.Port == 0 {
		t.Port = 22
	}
	if t.User == "" {
		t.User = "root"
	}
	if t.Action == "" {
		t.Action = "switch"
	}
	if t.Transfer == "" {
		t.Transfer = "pull"
	}
	if t.HealthTimeout == 0 {
		t.HealthTimeout = Duration(time.Minute)
	}
}

// TargetNames returns the names of the deploy targets, sorted.
func (d Deploy) TargetNames() []string {
	names := make([]string, 0, len(d.Targets))
	for n := range d.Targets {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// targetName is what a .hearth/deploy/NAME link and a systemd unit name can both carry.
var targetName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

func quoted(vals []string) string {
	q := make([]string, len(vals))
	for i, v := range vals {
		q[i] = fmt.Sprintf("%q", v)
	}
	return strings.Join(q, ", ")
}

func (d *Deploy) validate(at func(key ...string) string) error {
	if d.Parallel < 1 || d.Parallel > 64 {
		return fmt.Errorf("%s = %d: must be between 1 and 64", at("deploy", "parallel"), d.Parallel)
	}
	for _, p := range []struct {
		key string
		d   Duration
	}{{"confirm_timeout", d.ConfirmTimeout}, {"activation_timeout", d.ActivationTimeout}} {
		if p.d < Duration(time.Second) {
			return fmt.Errorf("%s = %q: must be at least 1s", at("deploy", p.key), p.d.Std())
		}
	}
	if !slices.Contains(UnitFailures, d.OnUnitFailure) {
		return fmt.Errorf("%s = %q: must be one of %s", at("deploy", "on_unit_failure"), d.OnUnitFailure, quoted(UnitFailures))
	}
	if !filepath.IsAbs(d.GCRootsDir) {
		return fmt.Errorf("%s = %q: must be an absolute path", at("deploy", "gc_roots_dir"), d.GCRootsDir)
	}
	canaries := 0
	for _, name := range d.TargetNames() {
		t := d.Targets[name]
		t.applyDefaults()
		d.Targets[name] = t
		key := func(k string) string { return at("deploy", "targets", name, k) }
		if !targetName.MatchString(name) {
			return fmt.Errorf("%s: the target name %q must be letters, digits, '.', '_' or '-' (it names the job's .hearth/deploy/%s link)", at("deploy", "targets", name), name, name)
		}
		switch {
		case t.Host == "":
			return fmt.Errorf("%s is not set: name the target's address", key("host"))
		case t.Port < 1 || t.Port > 65535:
			return fmt.Errorf("%s = %d: must be a TCP port", key("port"), t.Port)
		case t.KnownHostsFile == "":
			return fmt.Errorf("%s is not set: host keys are pinned; write the target's key to a file, e.g. `ssh-keyscan -t ed25519 %s > /etc/hearth/known_hosts.%s`, check its fingerprint, and name that file", key("known_hosts_file"), t.Host, name)
		case !filepath.IsAbs(t.KnownHostsFile):
			return fmt.Errorf("%s = %q: must be an absolute path", key("known_hosts_file"), t.KnownHostsFile)
		case t.IdentityFile == "":
			return fmt.Errorf("%s is not set: name the private key hearth logs in with", key("identity_file"))
		case !filepath.IsAbs(t.IdentityFile):
			return fmt.Errorf("%s = %q: must be an absolute path", key("identity_file"), t.IdentityFile)
		case len(t.Projects) == 0:
			return fmt.Errorf("%s is empty: list the GitLab project ids or paths (\"group/project\") that may deploy to %s", key("projects"), name)
		case !slices.Contains(DeployActions, t.Action):
			return fmt.Errorf("%s = %q: must be one of %s", key("action"), t.Action, quoted(DeployActions))
		case !slices.Contains(DeployTransfers, t.Transfer):
			return fmt.Errorf("%s = %q: must be one of %s", key("transfer"), t.Transfer, quoted(DeployTransfers))
		case t.HealthTimeout < Duration(time.Second):
			return fmt.Errorf("%s = %q: must be at least 1s", key("health_timeout"), t.HealthTimeout.Std())
		}
		for _, p := range t.Projects {
			if strings.TrimSpace(p) == "" || strings.Trim(p, "/") != p {
				return fmt.Errorf("%s: %q is neither a project id nor a path such as \"group/project\"", key("projects"), p)
			}
		}
		for i, hc := range t.HealthChecks {
			switch {
			case (hc.Command == "") == (hc.URL == ""):
				return fmt.Errorf("%s: check %d must have either command or url", key("health_checks"), i+1)
			case hc.URL != "":
				u, err := url.Parse(hc.URL)
				if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
					return fmt.Errorf("%s: check %d: %q is not an http:// or https:// URL", key("health_checks"), i+1, hc.URL)
				}
			case hc.Status != 0:
				return fmt.Errorf("%s: check %d: status applies to url checks only", key("health_checks"), i+1)
			}
			if hc.Status != 0 && (hc.Status < 100 || hc.Status > 599) {
				return fmt.Errorf("%s: check %d: status %d is not an HTTP status", key("health_checks"), i+1, hc.Status)
			}
		}
		if t.Canary {
			canaries++
			if canaries > 1 {
				return fmt.Errorf("%s: a second canary; at most one target goes first alone", key("canary"))
			}
		}
	}
	return nil
}

// CheckDeployFiles checks what only a deploy reads — each target's known-hosts and identity files
// — so that `hearth config check` finds a missing key long before a deploy does, while a driver
// stage never fails on them. src is the file the config was parsed from, for line numbers.
func (c *Config) CheckDeployFiles(src []byte) []error {
	at := func(key ...string) string { return at(src, key...) }
	var errs []error
	for _, name := range c.Deploy.TargetNames() {
		t := c.Deploy.Targets[name]
		for _, f := range []struct{ key, path, what string }{
			{"known_hosts_file", t.KnownHostsFile, "the pinned host keys"},
			{"identity_file", t.IdentityFile, "the SSH private key"},
		} {
			b, err := os.ReadFile(f.path)
			switch {
			case errors.Is(err, os.ErrNotExist):
				errs = append(errs, fmt.Errorf("%s = %q does not exist: it must hold %s", at("deploy", "targets", name, f.key), f.path, f.what))
			case err != nil:
				errs = append(errs, fmt.Errorf("%s = %q cannot be read: %v", at("deploy", "targets", name, f.key), f.path, err))
			case len(strings.TrimSpace(string(b))) == 0:
				errs = append(errs, fmt.Errorf("%s = %q is empty: it must hold %s", at("deploy", "targets", name, f.key), f.path, f.what))
			}
		}
	}
	return errs
}

// Check loads the file at path and checks the files it names, as `hearth config check` does.
func Check(path string) (*Config, []error) {
	c, err := Load(path)
	if err != nil {
		return nil, []error{err}
	}
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, []error{fmt.Errorf("read config: %w", err)}
	}
	var errs []error
	for _, e := range c.CheckDeployFiles(src) {
		errs = append(errs, fmt.Errorf("config %s: %w", path, e))
	}
	return c, errs
}
