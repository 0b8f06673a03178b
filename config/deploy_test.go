package config

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

const target = `
[deploy.targets.vps]
host = "vps.example.com"
known_hosts_file = "/etc/hearth/known_hosts.vps"
identity_file = "/etc/hearth/deploy_ed25519"
projects = ["42", "infra/nixos"]
`

// The example's commented-out target, uncommented, is a valid target.
func TestExampleTargetParses(t *testing.T) {
	src, err := os.ReadFile("../config.toml.example")
	if err != nil {
		t.Fatal(err)
	}
	section := sectionOf(string(src), "deploy.targets.NAME")
	var lines []string
	lines = append(lines, "[deploy.targets.vps]")
	for _, l := range strings.Split(section, "\n") {
		if m := regexp.MustCompile(`^# ([a-z_]+ = .*)$`).FindStringSubmatch(l); m != nil {
			lines = append(lines, m[1])
		}
	}
	c, err := Parse([]byte(minimal + strings.Join(lines, "\n") + "\n"))
	if err != nil {
		t.Fatalf("the example target does not parse: %v\n%s", err, strings.Join(lines, "\n"))
	}
	vps := c.Deploy.Targets["vps"]
	if len(vps.HealthChecks) != 2 || vps.HealthChecks[1].Status != 200 || vps.Refs[0] != "main" {
		t.Fatalf("example target read as %+v", vps)
	}
}

func TestDeployDefaults(t *testing.T) {
	c, err := Parse([]byte(minimal + target))
	if err != nil {
		t.Fatal(err)
	}
	vps := c.Deploy.Targets["vps"]
	if vps.Port != 22 || vps.User != "root" || vps.Action != "switch" || vps.Transfer != "pull" || vps.HealthTimeout.Std() != time.Minute {
		t.Fatalf("target defaults: %+v", vps)
	}
	if c.Deploy.Parallel != 4 || c.Deploy.ConfirmTimeout.Std() != 30*time.Second || c.Deploy.OnUnitFailure != "rollback" {
		t.Fatalf("deploy defaults: %+v", c.Deploy)
	}
}

func TestDeployErrors(t *testing.T) {
	tests := []struct {
		name, src, want string
	}{
		{"no known hosts", strings.Replace(target, `known_hosts_file = "/etc/hearth/known_hosts.vps"`, ``, 1), `line 5: deploy\.targets\.vps\.known_hosts_file is not set: host keys are pinned; .*ssh-keyscan`},
		{"relative known hosts", strings.Replace(target, `"/etc/hearth/known_hosts.vps"`, `"known_hosts"`, 1), `line 7: deploy\.targets\.vps\.known_hosts_file = "known_hosts": must be an absolute path`},
		{"unknown action", target + `action = "dry-activate"` + "\n", `line 10: deploy\.targets\.vps\.action = "dry-activate": must be one of "switch", "boot", "test"`},
		{"empty projects", strings.Replace(target, `["42", "infra/nixos"]`, `[]`, 1), `line 9: deploy\.targets\.vps\.projects is empty`},
		{"bad transfer", target + `transfer = "rsync"` + "\n", `deploy\.targets\.vps\.transfer = "rsync": must be one of "pull", "push"`},
		{"two canaries", target + "canary = true\n" + strings.Replace(target, "vps]", "web]", 1) + "canary = true\n", `deploy\.targets\.web\.canary: a second canary`},
		{"bad target name", strings.Replace(target, "vps]", "\"a b\"]", 1), `the target name "a b" must be`},
		{"check with both", target + `health_checks = [{ command = "true", url = "http://x/" }]` + "\n", `check 1 must have either command or url`},
		{"check url", target + `health_checks = [{ url = "ftp://x/" }]` + "\n", `check 1: "ftp://x/" is not an http`},
		{"unknown check key", target + `health_checks = [{ cmd = "true" }]` + "\n", `unknown key "deploy\.targets\.vps\.health_checks\.cmd"`},
		{"unit failure", "[deploy]\non_unit_failure = \"ignore\"\n", `line 5: deploy\.on_unit_failure = "ignore": must be one of "rollback", "keep"`},
		{"parallel", "[deploy]\nparallel = 0\n", `line 5: deploy\.parallel = 0: must be between 1 and 64`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(minimal + tc.src))
			if err == nil {
				t.Fatalf("no error, want %s", tc.want)
			}
			if !regexp.MustCompile(tc.want).MatchString(err.Error()) {
				t.Fatalf("error %q does not match %q", err, tc.want)
			}
		})
	}
}

// The files a deploy needs are checked by config check, with their keys and lines, and not by Parse.
func TestCheckDeployFiles(t *testing.T) {
	dir := t.TempDir()
	known := filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(known, []byte("vps ssh-ed25519 AAAA\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	unreadable := filepath.Join(dir, "key")
	if err := os.Mkdir(unreadable, 0o700); err != nil {
		t.Fatal(err)
	}
	src := strings.NewReplacer("/etc/hearth/known_hosts.vps", known, "/etc/hearth/deploy_ed25519", unreadable).Replace(minimal + target)
	path := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); err != nil {
		t.Fatalf("Load checks no deploy files, yet: %v", err)
	}
	_, errs := Check(path)
	if len(errs) != 1 || !regexp.MustCompile(`line 8: deploy\.targets\.vps\.identity_file = ".*/key" cannot be read`).MatchString(errs[0].Error()) {
		t.Fatalf("Check: %v", errs)
	}
	os.Remove(known)
	_, errs = Check(path)
	if len(errs) != 2 || !strings.Contains(errs[0].Error(), `line 7: deploy.targets.vps.known_hosts_file = "`+known+`" does not exist: it must hold the pinned host keys`) {
		t.Fatalf("Check: %v", errs)
	}
}
