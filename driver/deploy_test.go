package driver

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/hearth-ci/hearth/config"
	"github.com/hearth-ci/hearth/deploy"
	"github.com/hearth-ci/hearth/metrics"
	"github.com/hearth-ci/hearth/nixstore"
	"golang.org/x/sys/unix"
)

const targets = `
[deploy.targets.vps]
host = "10.0.0.2"
known_hosts_file = "/etc/hearth/known_hosts"
identity_file = "/etc/hearth/id"
projects = ["7"]
[deploy.targets.web]
host = "10.0.0.3"
known_hosts_file = "/etc/hearth/known_hosts"
identity_file = "/etc/hearth/id"
projects = ["g/p"]
refs = ["release"]
[deploy.targets.other]
host = "10.0.0.4"
known_hosts_file = "/etc/hearth/known_hosts"
identity_file = "/etc/hearth/id"
projects = ["8", "g/q"]
`

const system = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-vps"

type fakeDeployer struct {
	got     []deploy.Request
	origin  deploy.Origin
	outcome deploy.Outcome
}

func (f *fakeDeployer) Run(_ context.Context, reqs []deploy.Request) []deploy.Result {
	f.got = append(f.got, reqs...)
	var out []deploy.Result
	for _, r := range reqs {
		out = append(out, deploy.Result{Target: r.Target, Path: r.Path, Outcome: f.outcome, Generation: "5"})
	}
	return out
}

// fakeStore knows no path: every system a test asks for is invalid here.
type fakeStore struct{}

func (fakeStore) Info(context.Context, []string) ([]nixstore.PathInfo, error) {
	return nil, errors.New("path is not valid")
}

// deployJob is a job whose script, run in its builds dir, leaves what leave makes there.
func deployJob(t *testing.T, protected bool, leave func(project string)) (*job, *fakeDeployer) {
	t.Helper()
	j := newJob(t, setup{push: "never", protected: protected, config: targets})
	j.exec.builds = filepath.Join(j.dir, "builds")
	project := filepath.Join(j.exec.builds, "g", "p")
	if err := os.MkdirAll(project, 0o755); err != nil {
		t.Fatal(err)
	}
	j.exec.run = func(string) {
		if leave != nil {
			leave(project)
		}
	}
	fd := &fakeDeployer{outcome: deploy.Deployed}
	j.driver.Store = fakeStore{}
	j.driver.OpenDeployer = func(o deploy.Origin, _ func(string, string)) Deployer { fd.origin = o; return fd }
	return j, fd
}

func link(t *testing.T, project, name, to string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(project, ".hearth", "deploy"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(to, filepath.Join(project, ".hearth", "deploy", name)); err != nil {
		t.Fatal(err)
	}
}

// A job that asks for nothing deploys nothing and says nothing about it.
func TestNoRequestNoDeploy(t *testing.T) {
	j, fd := deployJob(t, true, nil)
	if err := j.run(t, "step_script"); err != nil {
		t.Fatal(err)
	}
	if len(fd.got) != 0 || strings.Contains(j.log.String(), "eploy") {
		t.Fatalf("deployed %v; log:\n%s", fd.got, j.log.String())
	}
}

// Refusals fail the job as a build failure with the deploy exit code, deploy nothing, and say
// which targets this project and ref may deploy to.
func TestDeployRefused(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "secret")
	// A directory outside the builds dir with a request in it: reached only through a symlink,
	// and never touched.
	outside := t.TempDir()
	if err := os.Symlink(system, filepath.Join(outside, "vps")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(outside, "deploy"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(system, filepath.Join(outside, "deploy", "vps")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(secret, []byte("do not read me\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		protected bool
		leave     func(t *testing.T, project string)
		want      []string
	}{
		{"unprotected ref, whatever the variables say", false, func(t *testing.T, p string) { link(t, p, "vps", system) },
			[]string{`.hearth/deploy/vps: may not be deployed to by this job: ref "main" is not protected`, "may deploy to: no target"}},
		{"project not in the list", true, func(t *testing.T, p string) { link(t, p, "other", system) },
			[]string{"project g/p (7) is not in its projects", "may deploy to: vps"}},
		{"ref not in the list", true, func(t *testing.T, p string) { link(t, p, "web", system) },
			[]string{`ref "main" is not in its refs (release)`}},
		{"unknown target", true, func(t *testing.T, p string) { link(t, p, "mars", system) },
			[]string{".hearth/deploy/mars: is not a target this runner knows"}},
		{"link to a host file", true, func(t *testing.T, p string) { link(t, p, "vps", secret) },
			[]string{`"` + secret + `" is not a store path`}},
		{"store path not valid here", true, func(t *testing.T, p string) { link(t, p, "vps", system) },
			[]string{system + " is not a valid path in this host's Nix store"}},
		{"file naming a host file", true, func(t *testing.T, p string) {
			os.MkdirAll(filepath.Join(p, ".hearth", "deploy"), 0o755)
			os.WriteFile(filepath.Join(p, ".hearth", "deploy", "vps"), []byte(secret+"\n"), 0o644)
		}, []string{`"` + secret + `" is not a store path`}},
		{"request dir is a symlink", true, func(t *testing.T, p string) {
			os.MkdirAll(filepath.Join(p, ".hearth"), 0o755)
			os.Symlink(outside, filepath.Join(p, ".hearth", "deploy"))
		}, []string{"is a symlink, or is under one", "nothing was followed"}},
		{".hearth is a symlink", true, func(t *testing.T, p string) {
			os.Symlink(outside, filepath.Join(p, ".hearth"))
		}, []string{"is a symlink, or is under one"}},
		{"a directory with a request in it", true, func(t *testing.T, p string) {
			os.MkdirAll(filepath.Join(p, ".hearth", "deploy", "vps", "sub"), 0o755)
			os.Symlink(outside, filepath.Join(p, ".hearth", "deploy", "vps", "sub", "link"))
		}, []string{"vps: is neither a symlink to a store path nor a file holding one"}},
		{"a fifo", true, func(t *testing.T, p string) {
			os.MkdirAll(filepath.Join(p, ".hearth", "deploy"), 0o755)
			mkfifo(t, filepath.Join(p, ".hearth", "deploy", "vps"))
		}, []string{"vps: is neither a symlink to a store path nor a file holding one"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var project string
			j, fd := deployJob(t, tc.protected, func(p string) { project = p; tc.leave(t, p) })
			rec := &fakeRecorder{}
			j.driver.Metrics = rec
			err := j.run(t, "step_script")
			var f *Failure
			if !errors.As(err, &f) || f.Kind != BuildFailure {
				t.Fatalf("err = %v, want a build failure; log:\n%s", err, j.log.String())
			}
			if len(fd.got) != 0 {
				t.Fatalf("deployed %v", fd.got)
			}
			if len(rec.events) != 1 || rec.events[0].Kind != metrics.KindDeploy || rec.events[0].Result != "refused" {
				t.Errorf("recorded %+v, want one refused deploy", rec.events)
			}
			if code, _ := os.ReadFile(j.codeFile); strings.TrimSpace(string(code)) != "3" {
				t.Fatalf("BUILD_EXIT_CODE_FILE says %q, want the deploy exit code 3", code)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			// The request is gone, whatever it was; what it pointed at is untouched.
			if _, err := os.Lstat(filepath.Join(project, ".hearth", "deploy", "vps")); err == nil {
				t.Errorf("the request is still there")
			}
			if b, err := os.ReadFile(secret); err != nil || string(b) != "do not read me\n" {
				t.Errorf("the host file was touched: %q, %v", b, err)
			}
			for _, f := range []string{filepath.Join(outside, "vps"), filepath.Join(outside, "deploy", "vps")} {
				if _, err := os.Lstat(f); err != nil {
					t.Errorf("%s, outside the builds dir, is gone: %v", f, err)
				}
			}
			// Nothing the job left in the request dir survives for the next job.
			if names, _ := os.ReadDir(filepath.Join(project, ".hearth", "deploy")); len(names) != 0 {
				t.Errorf("left in the request dir: %v", names)
			}
		})
	}
}

// A link an earlier job left, or one the checkout carries, is cleared before the script runs.
func TestOldRequestNotDeployed(t *testing.T) {
	j, fd := deployJob(t, true, nil)
	link(t, filepath.Join(j.exec.builds, "g", "p"), "vps", system)
	if err := j.run(t, "step_script"); err != nil {
		t.Fatalf("%v; log:\n%s", err, j.log.String())
	}
	if len(fd.got) != 0 {
		t.Fatalf("deployed %v, left before the job", fd.got)
	}
	// Other stages neither clear nor read requests.
	link(t, filepath.Join(j.exec.builds, "g", "p"), "vps", system)
	if err := j.run(t, "after_script"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(j.exec.builds, "g", "p", ".hearth", "deploy", "vps")); err != nil {
		t.Fatalf("after_script touched the request dir: %v", err)
	}
}

func TestRefusalPolicy(t *testing.T) {
	cfg, err := config.Parse([]byte(minimalConfig + targets))
	if err != nil {
		t.Fatal(err)
	}
	yes, no := true, false
	p := &Payload{}
	p.JobInfo.ProjectID = 8
	p.GitInfo.RepoURL = "https://gitlab.example.com/g/q.git"
	p.GitInfo.Ref = "release"
	p.GitInfo.Protected = &yes
	if got := allowedTargets(cfg.Deploy, p); !reflect.DeepEqual(got, []string{"other"}) {
		t.Fatalf("allowed %v", got)
	}
	p.JobInfo.ProjectID = 7
	p.GitInfo.RepoURL = "https://gitlab.example.com/g/p.git"
	if got := allowedTargets(cfg.Deploy, p); !reflect.DeepEqual(got, []string{"vps", "web"}) {
		t.Fatalf("allowed %v", got)
	}
	p.GitInfo.Protected = &no
	if got := allowedTargets(cfg.Deploy, p); len(got) != 0 {
		t.Fatalf("unprotected: allowed %v", got)
	}
	p.GitInfo.Protected = nil
	if got := allowedTargets(cfg.Deploy, p); len(got) != 0 {
		t.Fatalf("payload without protected: allowed %v", got)
	}
	if got := repoPath(&Payload{}); got != "project-0" {
		t.Fatalf("repo path without a URL: %q", got)
	}
}

const minimalConfig = "[environments.default]\nstore_path = \"/nix/store/00000000000000000000000000000000-env\"\n"

func mkfifo(t *testing.T, path string) {
	t.Helper()
	if err := unix.Mkfifo(path, 0o644); err != nil {
		t.Fatal(err)
	}
}
