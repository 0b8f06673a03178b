package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hearth-ci/hearth/internal/testenv"
	"github.com/hearth-ci/hearth/internal/testenv/sshtarget"
)

type doctorLine struct {
	Check  string `json:"check"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
	Fix    string `json:"fix"`
}

// doctor runs `hearth doctor --json` with the config and d's nix.conf (the host's, for the checks
// that read what this host's Nix trusts), and returns its lines and whether it exited 0.
func doctor(t *testing.T, cfg string, d *testenv.Daemon) ([]doctorLine, bool) {
	t.Helper()
	cmd := exec.Command(parts.Hearth, "--config", cfg, "doctor", "--json")
	cmd.Env = append(os.Environ(), "NIX_CONF_DIR="+d.NixConfDir)
	out, err := cmd.Output()
	if _, exited := err.(*exec.ExitError); err != nil && !exited {
		t.Fatal(err)
	}
	var lines []doctorLine
	if jerr := json.Unmarshal(out, &lines); jerr != nil {
		t.Fatalf("hearth doctor --json: %v (%v)\n%s", jerr, err, out)
	}
	return lines, err == nil
}

// failedChecks are the checks of lines that are ✗, advisories aside: Debian's Nix 2.8 (and 2.26)
// really predate the fixes of some.
func failedChecks(lines []doctorLine) []string {
	var failed []string
	for _, l := range lines {
		if !l.OK && !strings.HasSuffix(l.Check, " advisories") {
			failed = append(failed, l.Check)
		}
	}
	return failed
}

// watching runs `hearth cache watch` for cfg, as the runner host's unit does, until t ends or
// the returned stop is called.
func watching(t *testing.T, cfg string) (stop func()) {
	t.Helper()
	return startWatch(t, cfg).stop
}

// line is the doctor's line for check, failing the test when there is none.
func line(t *testing.T, lines []doctorLine, check string) doctorLine {
	t.Helper()
	for _, l := range lines {
		if l.Check == check {
			return l
		}
	}
	t.Fatalf("hearth doctor has no %q line: %+v", check, lines)
	return doctorLine{}
}

// doctorConfig is a two-tier config on p (the protected tier's daemon) and u, signing the cache
// with key, with targets appended.
func doctorConfig(t *testing.T, p, u *testenv.Daemon, key, tables string) string {
	t.Helper()
	cache := fmt.Sprintf("\n[cache.file]\ndir = %q\nsigning_key_file = %q\n", filepath.Join(t.TempDir(), "cache"), key)
	cfg, err := p.WriteTieredConfig(u, "", "", cache+tables)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// hearth doctor on the test environment: every line ✓ but the advisories, which Debian's Nix 2.8
// (and 2.26) really predate the fixes of; then one thing broken at a time, each turning its own
// line ✗ with its fix, and the exit status non-zero.
func TestDoctor(t *testing.T) {
	if err := sshtarget.Available(); err != nil {
		if os.Getenv("HEARTH_CI") != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	fleet, err := sshtarget.StartFleet(filepath.Join(parts.Dir, fmt.Sprintf("doctor-fleet-%d", os.Getpid())), 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fleet.Stop() })
	tg := fleet.Targets()[0]
	target := func(knownHosts string) string {
		return fmt.Sprintf("\n[deploy.targets.t1]\nhost = %q\nknown_hosts_file = %q\nidentity_file = %q\nprojects = [\"7\"]\n", tg.Addr, knownHosts, fleet.Identity)
	}

	// The daemons of a host set up as the README says: each in a network namespace of its own,
	// where fetchers reach the outside and nothing of the host.
	p, err := parts.NewIsolatedDaemon()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	u, err := parts.NewIsolatedTierDaemon()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(u.Stop)
	metricsOn := fmt.Sprintf("\n[metrics]\nlisten = %q\n", freeLoopbackAddr(t))
	good := doctorConfig(t, p, u, parts.TeamKey, target(tg.KnownHosts)+metricsOn)
	// On a state dir that does not exist yet, as on a fresh host: what the doctor makes there
	// (the probe's network namespace) must leave it usable by the jobs that follow.
	fresh := filepath.Join(parts.Dir, fmt.Sprintf("ds%d", time.Now().UnixNano()%1000))
	replaceInFile(t, good, fmt.Sprintf("state_dir = %q", parts.StateDir()), fmt.Sprintf("state_dir = %q", fresh))
	stopWatching := watching(t, good)
	lines, exited0 := doctor(t, good, p)
	if failed := failedChecks(lines); len(failed) > 0 {
		t.Fatalf("hearth doctor fails on the test environment: %q\n%+v", failed, lines)
	}
	for _, check := range []string{"containerd", "runc", "user namespaces", "job uid range", "state dir",
		"nix-daemon (protected tier)", "nix-daemon (protected tier) trust", "nix-daemon (protected tier) sandbox", "nix-daemon (protected tier) fetchers", "nix-daemon (protected tier) post-build-hook",
		"nix-daemon (unprotected tier)", "nix-daemon (unprotected tier) trust", "nix-daemon (unprotected tier) sandbox", "nix-daemon (unprotected tier) fetchers", "nix-daemon (unprotected tier) post-build-hook",
		"queue", "cache watch", "rejected paths", "metrics", "cache", "cache key", "deploy target t1", "job network"} {
		line(t, lines, check)
	}
	if adv := line(t, lines, "nix-daemon (protected tier) advisories"); adv.OK || exited0 {
		t.Fatalf("Nix %s passes the advisory check (exit 0: %v): %+v", adv.Detail, exited0, adv)
	}
	if l := line(t, lines, "cache watch"); !strings.HasPrefix(l.Detail, "pushed the probe ") {
		t.Errorf("the watcher did not push the probe: %+v", l)
	}
	if l := line(t, lines, "metrics"); !strings.HasPrefix(l.Detail, "served on http://127.0.0.1:") {
		t.Errorf("the metrics line: %+v", l)
	}
	if res, log := runJobAs(t, good, "after:\n  script:\n    - echo after-the-doctor\n", "after", true); res.State != "success" {
		t.Fatalf("a job after the doctor on a fresh host: %s\n%s", res, log)
	}
	// For people: a line per check, ✓ or ✗, the fix under each ✗.
	text, err := runHearth(good, "doctor")
	if err == nil || !strings.Contains(text, "\n✓ runc: ") || !strings.Contains(text, "\n✗ nix-daemon (protected tier) advisories: Nix ") || !strings.Contains(text, "\n    → update Nix on this host\n") {
		t.Errorf("hearth doctor's text (%v):\n%s", err, text)
	}
	t.Logf("hearth doctor on the test environment:\n%s", text)
	// The cases below share the queue: each runs a watcher of its own, or none.
	stopWatching()

	other, _ := keyPair(t, "hearth-e2e-doctor-other-1")
	empty := filepath.Join(t.TempDir(), "known_hosts")
	os.WriteFile(empty, nil, 0o600)
	for _, tc := range []struct {
		name, check, want, fix string
		// setup returns the config and the daemon whose nix.conf the host has.
		setup func(t *testing.T) (string, *testenv.Daemon)
	}{
		{"containerd stopped", "containerd", "is unreachable", "start containerd", func(t *testing.T) (string, *testenv.Daemon) {
			cfg := doctorConfig(t, p, u, parts.TeamKey, "")
			replaceInFile(t, cfg, fmt.Sprintf("address = %q", parts.ContainerdSocket), fmt.Sprintf("address = %q", filepath.Join(t.TempDir(), "containerd.sock")))
			return cfg, p
		}},
		{"sandbox off", "nix-daemon (protected tier) sandbox", "builds run outside the sandbox", "sandbox = true", func(t *testing.T) (string, *testenv.Daemon) {
			d := daemonWith(t, "sandbox = false\n")
			return doctorConfig(t, d, u, parts.TeamKey, ""), d
		}},
		{"the hook missing", "nix-daemon (protected tier) post-build-hook", "nothing was queued", "hearth cache hook", func(t *testing.T) (string, *testenv.Daemon) {
			d := daemonWith(t, "post-build-hook =\n")
			return doctorConfig(t, d, u, parts.TeamKey, ""), d
		}},
		{"the uid range trusted", "nix-daemon (protected tier) trust", "the daemon trusts uid 1073741824", "trusted-users", func(t *testing.T) (string, *testenv.Daemon) {
			d := daemonWith(t, "trusted-users = root 1073741824\n")
			return doctorConfig(t, d, u, parts.TeamKey, ""), d
		}},
		{"a wrong cache key", "cache key", "which this host's Nix does not trust", "trusted-public-keys", func(t *testing.T) (string, *testenv.Daemon) {
			return doctorConfig(t, p, u, other, ""), p
		}},
		{"an unknown target host key", "deploy target t1", "is not pinned in " + empty, "known_hosts_file", func(t *testing.T) (string, *testenv.Daemon) {
			return doctorConfig(t, p, u, parts.TeamKey, target(empty)), p
		}},
		{"cache watch stopped", "cache watch", "the probe is still queued after", "hearth cache watch", func(t *testing.T) (string, *testenv.Daemon) {
			return doctorConfig(t, p, u, parts.TeamKey, ""), p
		}},
		{"fetchers on the host's network", "nix-daemon (unprotected tier) fetchers", "reached the host at 127.0.0.1:", "IPAddressDeny", func(t *testing.T) (string, *testenv.Daemon) {
			// An unprotected tier whose daemon runs in the host's network namespace, unfiltered.
			return doctorConfig(t, p, tierOf(t, false), parts.TeamKey, ""), p
		}},
		{"metrics not served", "metrics", "nothing serves http://", "hearth cache watch", func(t *testing.T) (string, *testenv.Daemon) {
			// A watcher that pushes but serves no metrics: one started before they were turned on.
			cfg := doctorConfig(t, p, u, parts.TeamKey, "")
			watching(t, cfg)
			metricsCfg := filepath.Join(t.TempDir(), "config.toml")
			b, err := os.ReadFile(cfg)
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(metricsCfg, append(b, fmt.Sprintf("\n[metrics]\nlisten = %q\n", freeLoopbackAddr(t))...), 0o600)
			return metricsCfg, p
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, d := tc.setup(t)
			if tc.check != "cache watch" && tc.check != "metrics" {
				watching(t, cfg)
			}
			lines, exited0 := doctor(t, cfg, d)
			if failed := failedChecks(lines); len(failed) != 1 || failed[0] != tc.check {
				t.Fatalf("%s: the ✗ lines are %q, want %q alone\n%+v", tc.name, failed, tc.check, lines)
			}
			l := line(t, lines, tc.check)
			if l.OK || !strings.Contains(l.Detail, tc.want) || !strings.Contains(l.Fix, tc.fix) {
				t.Fatalf("%s: the %q line is %+v, want ✗ saying %q with a fix naming %q", tc.name, tc.check, l, tc.want, tc.fix)
			}
			if exited0 {
				t.Fatal("hearth doctor exited 0")
			}
		})
	}
}

// daemonWith is a daemon of t's own on the system store, with conf added to its nix.conf.
func daemonWith(t *testing.T, conf string) *testenv.Daemon {
	t.Helper()
	d, err := parts.NewIsolatedDaemonWith(conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Stop)
	return d
}

// replaceInFile replaces old with new in the file at path, failing when old is not there.
func replaceInFile(t *testing.T, path, old, new string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), old) {
		t.Fatalf("%s has no %q", path, old)
	}
	if err := os.WriteFile(path, []byte(strings.Replace(string(b), old, new, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
}
