package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/hearth-ci/hearth/internal/testenv"
)

// driverJob calls the driver's stages directly, as gitlab-runner would, for tests about the
// contract itself (exit codes, the exit-code file, a runner that dies).
type driverJob struct {
	t   *testing.T
	cfg string
	dir string
	id  int64
	// vars are job variables (CUSTOM_ENV_*) of every stage.
	vars map[string]string
}

func newDriverJob(t *testing.T, cfg, image string) *driverJob {
	t.Helper()
	j := &driverJob{t: t, cfg: cfg, dir: t.TempDir(), id: nextJobID()}
	payload := `{"id":` + strconv.FormatInt(j.id, 10) + `,"job_info":{"project_id":7},"git_info":{"repo_url":"https://gitlab.example.com/group/project.git"},"image":{"name":"` + image + `"}}`
	if err := os.WriteFile(filepath.Join(j.dir, "response.json"), []byte(payload), 0o600); err != nil {
		t.Fatal(err)
	}
	return j
}

func (j *driverJob) command(stage string, args ...string) *exec.Cmd {
	cmd := exec.Command(parts.Hearth, append([]string{"--config", j.cfg, "driver", stage}, args...)...)
	cmd.Dir = j.dir
	cmd.Env = append(os.Environ(),
		"TMPDIR="+j.dir,
		"BUILD_FAILURE_EXIT_CODE=1", "SYSTEM_FAILURE_EXIT_CODE=2",
		"BUILD_EXIT_CODE_FILE="+filepath.Join(j.dir, "build_exit_code"),
		"JOB_RESPONSE_FILE="+filepath.Join(j.dir, "response.json"),
		"CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN=tok",
	)
	for k, v := range j.vars {
		cmd.Env = append(cmd.Env, "CUSTOM_ENV_"+k+"="+v)
	}
	return cmd
}

// call runs a stage to its end and returns its exit code and output.
func (j *driverJob) call(stage string, args ...string) (int, string) {
	out, err := j.command(stage, args...).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		j.t.Fatal(err)
	}
	return 0, string(out)
}

func (j *driverJob) scriptFile(name, body string) string {
	p := filepath.Join(j.dir, name+".sh")
	if err := os.WriteFile(p, []byte(body), 0o700); err != nil {
		j.t.Fatal(err)
	}
	return p
}

func (j *driverJob) runScript(stage, body string) (int, string) {
	return j.call("run", j.scriptFile(stage, body), stage)
}

// exitCodeFile is what BUILD_EXIT_CODE_FILE holds, or "missing".
func (j *driverJob) exitCodeFile() string {
	b, err := os.ReadFile(filepath.Join(j.dir, "build_exit_code"))
	if err != nil {
		return "missing"
	}
	return strings.TrimSpace(string(b))
}

func (j *driverJob) containerID() string { return containerID(j.id) }

// mkdirWith makes a directory holding files (relative path → content), for nix-store --add.
func mkdirWith(t *testing.T, name string, files map[string]string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	for p, content := range files {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func processesMatching(s string) []int { return testenv.ProcessesMatching(s) }

// inContainer reports whether pid runs in the cgroup of container id.
func inContainer(pid int, id string) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cgroup"))
	return err == nil && strings.Contains(string(b), id)
}

func execCommand(name string, args ...string) *exec.Cmd { return exec.Command(name, args...) }

// watch is a `hearth cache watch` a test runs, as the runner host's unit does.
type watch struct {
	logs syncBuffer
	done chan struct{} // closed when the process has exited
	stop func()
}

// startWatch runs `hearth cache watch` for cfg with args until t ends or stop is called.
func startWatch(t *testing.T, cfg string, args ...string) *watch {
	t.Helper()
	w := &watch{done: make(chan struct{})}
	cmd := exec.Command(parts.Hearth, append([]string{"--config", cfg, "cache", "watch"}, args...)...)
	cmd.Stdout, cmd.Stderr = &w.logs, &w.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cmd.Wait(); close(w.done) }()
	var once sync.Once
	w.stop = func() {
		once.Do(func() {
			cmd.Process.Kill()
			<-w.done
		})
	}
	t.Cleanup(w.stop)
	return w
}

// exited reports whether the watcher has ended.
func (w *watch) exited() bool {
	select {
	case <-w.done:
		return true
	default:
		return false
	}
}
