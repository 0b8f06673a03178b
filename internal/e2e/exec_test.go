package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-ci/hearth/config"
	"github.com/hearth-ci/hearth/driver"
)

// execJob is one `hearth exec` run: a project dir holding .gitlab-ci.yml, and the command.
type execJob struct {
	t      *testing.T
	dir    string
	cmd    *exec.Cmd
	stdout syncBuffer
	stderr syncBuffer
}

func newExecJob(t *testing.T, cfg, pipeline string, args ...string) *execJob {
	t.Helper()
	j := &execJob{t: t, dir: filepath.Join(t.TempDir(), "my-project")}
	if err := os.MkdirAll(j.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(j.dir, ".gitlab-ci.yml"), []byte(pipeline), 0o644); err != nil {
		t.Fatal(err)
	}
	j.cmd = exec.Command(parts.Hearth, append([]string{"--config", cfg, "exec"}, args...)...)
	j.cmd.Dir = j.dir
	j.cmd.Stdout, j.cmd.Stderr = &j.stdout, &j.stderr
	return j
}

// run runs the job to its end and returns hearth exec's exit code.
func (j *execJob) run() int {
	j.t.Helper()
	err := j.cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if err != nil {
		j.t.Fatal(err)
	}
	return 0
}

// execContainer is the container hearth exec's job id names, with exec's default repository URL.
func execContainer(jobID int64, projectPath string) string {
	p := &driver.Payload{ID: jobID}
	p.GitInfo.RepoURL = "https://gitlab.invalid/" + projectPath + ".git"
	return driver.ContainerID(p)
}

// hearth exec passes what its flags say to the job as GitLab would: job and project ids, the
// project's path and dir, ref, sha and whether the ref is protected (which push = "protected"
// reads from the payload); a failing script fails the command; the timeout ends the job.
func TestExecFlags(t *testing.T) {
	cfg := writeCacheConfig(t, "", `push = "protected"`, fmt.Sprintf("\n[cache.file]\ndir = %q\n", t.TempDir()))
	pipeline := `variables:
  GREETING: from-the-file
show:
  script:
    - echo "job=$CI_JOB_ID project=$CI_PROJECT_ID path=$CI_PROJECT_PATH dir=$CI_PROJECT_DIR"
    - echo "ref=$CI_COMMIT_REF_NAME sha=$CI_COMMIT_SHA protected=$CI_COMMIT_REF_PROTECTED greeting=$GREETING"
fail:
  script:
    - exit 3
slow:
  script:
    - sleep 60
`
	sha := strings.Repeat("5", 40)
	id := nextJobID()
	j := newExecJob(t, cfg, pipeline, "--job-id", strconv.FormatInt(id, 10), "--project-id", "9", "--project-path", "grp/proj",
		"--ref", "release", "--sha", sha, "--protected", "show")
	if code := j.run(); code != 0 {
		t.Fatalf("hearth exec exited %d:\n%s\n%s", code, j.stdout.String(), j.stderr.String())
	}
	out := j.stdout.String()
	for _, want := range []string{
		fmt.Sprintf("\njob=%d project=9 path=grp/proj dir=/builds/grp/proj\n", id),
		"\nref=release sha=" + sha + " protected=true greeting=from-the-file\n",
		"Pushing what the job built to file://",
		"Job succeeded",
	} {
		if !strings.Contains(out, want) {
			t.Fatalf("the job log lacks %q:\n%s", want, out)
		}
	}
	assertNothingLeft(t, execContainer(id, "grp/proj"))

	// Without --protected the payload says unprotected, and nothing is pushed; without
	// --project-path the project is local/<the current dir's name>.
	j = newExecJob(t, cfg, pipeline, "show")
	if code := j.run(); code != 0 || !strings.Contains(j.stdout.String(), " path=local/my-project dir=/builds/local/my-project\n") ||
		!strings.Contains(j.stdout.String(), "Not pushing to the binary cache: main is not a protected ref") {
		t.Fatalf("exit %d:\n%s", code, j.stdout.String())
	}

	j = newExecJob(t, cfg, pipeline, "fail")
	if code := j.run(); code != 1 || !strings.Contains(j.stdout.String(), "ERROR: Job failed: exit code 3") {
		t.Fatalf("a failing job: exit %d:\n%s", code, j.stdout.String())
	}
	start := time.Now()
	j = newExecJob(t, cfg, pipeline, "--timeout", "3s", "slow")
	if code := j.run(); code != 1 || !strings.Contains(j.stdout.String(), "execution took longer than 3s") || time.Since(start) > 30*time.Second {
		t.Fatalf("a job past its timeout: exit %d after %s:\n%s", code, time.Since(start), j.stdout.String())
	}
	j = newExecJob(t, cfg, pipeline, "nosuch")
	if code := j.run(); code != 1 || !strings.Contains(j.stderr.String(), "nosuch") {
		t.Fatalf("an unknown job: exit %d:\n%s", code, j.stderr.String())
	}
}

// Ctrl-C cancels: the script gets SIGTERM, after_script still runs to its end, the container goes.
// A second Ctrl-C aborts: it stops the after_script the first one let run, and the container goes
// all the same.
func TestExecInterrupts(t *testing.T) {
	cfg := writeConfig(t, "", "")
	pipeline := `sleeper:
  script:
    - echo sleeping
    - sleep 600
  after_script:
    - echo after-script-started
    - sleep %d
    - echo after-script-finished
`
	for _, tc := range []struct {
		name       string
		interrupts int
		afterSleep int // seconds: the abort's after_script would never end by itself
		finished   bool
	}{
		{"one Ctrl-C cancels", 1, 1, true},
		{"a second aborts", 2, 600, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := nextJobID()
			j := newExecJob(t, cfg, fmt.Sprintf(pipeline, tc.afterSleep), "--job-id", strconv.FormatInt(id, 10), "sleeper")
			if err := j.cmd.Start(); err != nil {
				t.Fatal(err)
			}
			ctr := execContainer(id, "local/my-project")
			waitFor(t, "the script to sleep", 30*time.Second, func() bool {
				return strings.Contains(j.stdout.String(), "\nsleeping\n") && len(sleepers(ctr)) > 0
			})
			start := time.Now()
			if err := j.cmd.Process.Signal(syscall.SIGINT); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "after_script to start", 10*time.Second, func() bool {
				return strings.Contains(j.stderr.String(), "Canceling the job") && strings.Contains(j.stdout.String(), "\nafter-script-started\n")
			})
			if tc.interrupts == 2 {
				if err := j.cmd.Process.Signal(syscall.SIGINT); err != nil {
					t.Fatal(err)
				}
			}
			err := j.cmd.Wait()
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
				t.Fatalf("hearth exec ended with %v, want exit status 1", err)
			}
			if d := time.Since(start); d > 20*time.Second {
				t.Fatalf("the job took %s to end after the interrupt", d)
			}
			out := j.stdout.String()
			if finished := strings.Contains(out, "\nafter-script-finished\n"); finished != tc.finished {
				t.Fatalf("after_script finished=%v, want %v:\n%s", finished, tc.finished, out)
			}
			if !strings.Contains(out, "ERROR: Job failed: canceled") {
				t.Fatalf("the log does not say the job was canceled:\n%s", out)
			}
			assertNothingLeft(t, ctr)
		})
	}
}

// GIT_STRATEGY fetch and clone get the sources from a real git repository (a bare one on the host,
// mounted into a configured environment): fetch keeps the checkout of the builds dir and fetches
// what is new into it, clone starts again from nothing.
func TestExecGitStrategies(t *testing.T) {
	repo := filepath.Join(t.TempDir(), "repo.git")
	work := filepath.Join(t.TempDir(), "work")
	git := func(dir string, args ...string) string {
		t.Helper()
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.com", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.com")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	chown := func(owner string) {
		t.Helper()
		if out, err := exec.Command("chown", "-R", owner, repo).CombinedOutput(); err != nil {
			t.Fatalf("chown: %v\n%s", err, out)
		}
	}
	commit := func(content string) string {
		t.Helper()
		chown("0:0") // git refuses to push into a repository another user owns
		if err := os.WriteFile(filepath.Join(work, "version"), []byte(content+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		git(work, "add", "version")
		git(work, "commit", "-q", "-m", content)
		git(work, "push", "-q", repo, "HEAD:refs/heads/main")
		// and the job refuses to fetch from one: hand it to the job's root, uid_map_start here.
		root := config.Default().Jobs.UIDMapStart
		chown(fmt.Sprintf("%d:%d", root, root))
		return git(work, "rev-parse", "HEAD")
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		t.Fatal(err)
	}
	git(filepath.Dir(repo), "init", "-q", "--bare", repo)
	git(work, "init", "-q", "-b", "main")
	first := commit("one")

	cfg := writeConfig(t, "", fmt.Sprintf("\n[environments.git]\nstore_path = %q\nmounts = [\"%s:/srv/repo.git\"]\n", parts.Environment, repo))
	pipeline := `check:
  image: git
  script:
    - echo "version=$(cat version) head=$(git rev-parse HEAD)"
    - if [ -e .git/hearth-marker ]; then echo kept-the-checkout; else echo new-checkout; fi
    - touch .git/hearth-marker
`
	run := func(strategy, sha string) string {
		t.Helper()
		yml := strings.Replace(pipeline, "  image: git\n", "  image: git\n  variables:\n    GIT_STRATEGY: "+strategy+"\n", 1)
		j := newExecJob(t, cfg, yml, "--project-path", "grp/gitproj", "--repo-url", "file:///srv/repo.git", "--sha", sha, "check")
		if code := j.run(); code != 0 {
			t.Fatalf("GIT_STRATEGY=%s: exit %d:\n%s\n%s", strategy, code, j.stdout.String(), j.stderr.String())
		}
		return j.stdout.String()
	}
	if out := run("fetch", first); !strings.Contains(out, "\nversion=one head="+first+"\n") || !strings.Contains(out, "\nnew-checkout\n") {
		t.Fatalf("first fetch:\n%s", out)
	}
	second := commit("two")
	if out := run("fetch", second); !strings.Contains(out, "\nversion=two head="+second+"\n") || !strings.Contains(out, "\nkept-the-checkout\n") {
		t.Fatalf("second fetch (incremental, in the same builds dir):\n%s", out)
	}
	if out := run("clone", first); !strings.Contains(out, "\nversion=one head="+first+"\n") || !strings.Contains(out, "\nnew-checkout\n") {
		t.Fatalf("clone:\n%s", out)
	}
	if !bytes.Contains([]byte(run("fetch", second)), []byte("kept-the-checkout")) {
		t.Fatal("a fetch after the clone did not keep its checkout")
	}
}
