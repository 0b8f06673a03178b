package runner

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Command is one of the [runners.custom] executables with its arguments.
type Command struct {
	Exec string
	Args []string
	role string
}

// Custom is the [runners.custom] section of gitlab-runner's config.
type Custom struct {
	Config, Prepare, Run, Cleanup Command
	// GracefulKillTimeout is how long a driver process has between SIGTERM and SIGKILL
	// (gitlab-runner's default: 10 min). ForceKillTimeout is how long after SIGKILL the runner
	// waits before giving up on it (default 10 s).
	GracefulKillTimeout, ForceKillTimeout time.Duration
}

// Options describe one job run.
type Options struct {
	Custom Custom
	Job    *Job
	JobID  int64
	// ProjectID, ProjectPath ("group/project"), the repository URL and commit, as GitLab sends them.
	ProjectID   int64
	ProjectPath string
	RepoURL     string
	Ref, SHA    string
	Protected   bool
	// RunnerToken is the runner's short token; ConcurrentID and ConcurrentProjectID its slot numbers.
	RunnerToken         string
	ConcurrentID        int
	ConcurrentProjectID int
	// Credentials are the registry logins GitLab sends with the job.
	Credentials []Credential
	// Timeout is the job timeout (default 1 h).
	Timeout time.Duration
	// Environ is the runner process's environment, passed to every driver call (default os.Environ()).
	Environ []string
	// Log receives the job log. RunnerLog receives what gitlab-runner logs itself (cleanup's output).
	Log, RunnerLog io.Writer
	// PrepareRetryInterval is the pause between prepare attempts (gitlab-runner: 3 s).
	PrepareRetryInterval time.Duration
	// Timed, when set, is told how long each driver call took: the executable's role ("config",
	// "prepare", "cleanup", or the stage name for run) and the wall time.
	Timed func(call string, d time.Duration)
}

// Credential is a registry login in the job payload.
type Credential struct {
	URL, Username, Password string
}

// Result is how a job ended.
type Result struct {
	// State is "success", "failed" or "canceled".
	State string
	// FailureReason is GitLab's: script_failure, runner_system_failure, job_canceled, job_execution_timeout.
	FailureReason string
	// ExitCode is the script's exit code for a script failure.
	ExitCode int
	Err      error
}

func (r Result) String() string {
	switch {
	case r.State == "success":
		return "Job succeeded"
	case r.FailureReason == "script_failure":
		return fmt.Sprintf("ERROR: Job failed: exit code %d", r.ExitCode)
	case r.FailureReason == "job_canceled":
		return "ERROR: Job failed: canceled"
	case r.FailureReason == "runner_system_failure":
		return fmt.Sprintf("ERROR: Job failed (system failure): %v", r.Err)
	}
	return fmt.Sprintf("ERROR: Job failed: %v", r.Err)
}

// Runner runs one job. Cancel and Abort may be called from another goroutine while Run runs.
type Runner struct {
	opts    Options
	tempDir string
	jobEnv  map[string]string
	vars    []Variable
	// projectDir is where the job's checkout lives inside the environment.
	projectDir string
	shell      string

	cancel     chan struct{} // graceful: stop the user script, still run after_script
	abort      chan struct{} // stop everything; only cleanup follows
	cancelOnce sync.Once
	abortOnce  sync.Once
	interrupts atomic.Int32
}

// New returns a Runner for opts. A job without an id gets a random one; without a project path,
// local/<the current directory's name>; without a repository URL, one on gitlab.invalid.
func New(opts Options) *Runner {
	if opts.JobID == 0 {
		n, _ := rand.Int(rand.Reader, big.NewInt(1e9))
		opts.JobID = n.Int64() + 1
	}
	if opts.ProjectPath == "" {
		wd, _ := os.Getwd()
		opts.ProjectPath = "local/" + filepath.Base(wd)
	}
	if opts.RepoURL == "" {
		opts.RepoURL = "https://gitlab.invalid/" + opts.ProjectPath + ".git"
	}
	opts.Custom.Config.role, opts.Custom.Prepare.role = "config", "prepare"
	opts.Custom.Run.role, opts.Custom.Cleanup.role = "run", "cleanup"
	if opts.Timeout == 0 {
		opts.Timeout = time.Hour
	}
	if opts.Environ == nil {
		opts.Environ = os.Environ()
	}
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	if opts.RunnerLog == nil {
		opts.RunnerLog = io.Discard
	}
	if opts.PrepareRetryInterval == 0 {
		opts.PrepareRetryInterval = 3 * time.Second
	}
	if opts.Custom.GracefulKillTimeout == 0 {
		opts.Custom.GracefulKillTimeout = 10 * time.Minute
	}
	if opts.Custom.ForceKillTimeout == 0 {
		opts.Custom.ForceKillTimeout = 10 * time.Second
	}
	return &Runner{opts: opts, cancel: make(chan struct{}), abort: make(chan struct{})}
}

// Cancel is GitLab's graceful cancel ("canceling"): the running user script gets SIGTERM, then
// after_script and cleanup still run.
func (r *Runner) Cancel() { r.cancelOnce.Do(func() { close(r.cancel) }) }

// Abort is GitLab's abort ("canceled"): every driver call in flight gets SIGTERM; only cleanup runs.
func (r *Runner) Abort() { r.abortOnce.Do(func() { close(r.abort) }) }

// Interrupt is Ctrl-C at a terminal: the first cancels the job, a second aborts it. It reports
// whether this one aborted.
func (r *Runner) Interrupt() (aborted bool) {
	if r.interrupts.Add(1) == 1 {
		r.Cancel()
		return false
	}
	r.Abort()
	return true
}

// JobID is the job's id, as given or as New chose it.
func (r *Runner) JobID() int64 { return r.opts.JobID }

var errCanceled = errors.New("canceled")

// exitFailure is a driver executable's exit with BUILD_FAILURE_EXIT_CODE.
type exitFailure struct {
	code int // from BUILD_EXIT_CODE_FILE
}

func (e *exitFailure) Error() string { return fmt.Sprintf("exit code %d", e.code) }

// Run runs the job and returns how it ended.
func (r *Runner) Run(ctx context.Context) Result {
	var err error
	r.tempDir, err = os.MkdirTemp("", "custom-executor")
	if err != nil {
		return Result{State: "failed", FailureReason: "runner_system_failure", Err: err}
	}
	defer os.RemoveAll(r.tempDir)
	deadline, cancelTimeout := context.WithTimeout(ctx, r.opts.Timeout)
	defer cancelTimeout()
	go func() {
		select {
		case <-deadline.Done():
			if ctx.Err() == nil && deadline.Err() == context.DeadlineExceeded {
				r.Abort()
			}
		case <-r.abort:
		}
	}()

	res := r.run()
	if deadline.Err() == context.DeadlineExceeded && ctx.Err() == nil && res.State != "success" {
		res = Result{State: "failed", FailureReason: "job_execution_timeout", Err: fmt.Errorf("execution took longer than %s", r.opts.Timeout)}
	}
	fmt.Fprintln(r.opts.Log, res.String())
	return res
}

func (r *Runner) run() Result {
	if err := r.writePayload(); err != nil {
		return system(err)
	}
	r.section("prepare_executor", `Preparing the "custom" executor`)
	prepared := false
	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		if attempt > 1 {
			select {
			case <-time.After(r.opts.PrepareRetryInterval):
			case <-r.abort:
			case <-r.cancel:
			}
		}
		if r.stopped() {
			err = errCanceled
			break
		}
		err = r.prepare()
		if err == nil {
			prepared = true
			break
		}
		// The runner cleans up after every failed attempt, with whatever state prepare left.
		r.cleanup()
		var bf *exitFailure
		if errors.As(err, &bf) || errors.Is(err, errCanceled) {
			break
		}
		fmt.Fprintf(r.opts.Log, "WARNING: Preparation failed: %v\nWill be retried in %s ...\n", err, r.opts.PrepareRetryInterval)
	}
	r.sectionEnd("prepare_executor")
	if !prepared {
		return r.result(err)
	}
	defer r.cleanup()

	if err := r.stage("prepare_script", "Preparing environment", r.prepareScript(), r.abort); err != nil {
		return r.result(err)
	}
	attempts := r.attempts("GET_SOURCES_ATTEMPTS")
	for a := 1; ; a++ {
		if a > 1 {
			if err := r.stage("clear_worktree", "Clearing worktree", r.clearWorktreeScript(), r.abort); err != nil {
				return r.result(err)
			}
		}
		err = r.stage("get_sources", "Getting source from Git repository", r.getSourcesScript(), r.abort)
		if err == nil || a >= attempts || r.stopped() {
			break
		}
	}
	if err != nil {
		r.stage("cleanup_file_variables", "Cleaning up project directory and file based variables", r.cleanupScript(), nil)
		return r.result(err)
	}

	// The custom executor sends the step_script stage as build_script.
	scriptErr := r.stage("build_script", `Executing "step_script" stage of the job script`, r.userScript(append(append([]string{}, r.opts.Job.BeforeScript...), r.opts.Job.Script...)), r.userStop())
	if len(r.opts.Job.AfterScript) > 0 && !r.aborted() {
		// Errors of after_script are ignored, as AFTER_SCRIPT_IGNORE_ERRORS defaults to true.
		_ = r.stage("after_script", "Running after_script", r.userScript(r.opts.Job.AfterScript), r.abort)
	}
	if !r.aborted() {
		_ = r.stage("cleanup_file_variables", "Cleaning up project directory and file based variables", r.cleanupScript(), nil)
	}
	if scriptErr == nil && r.canceled() {
		scriptErr = errCanceled
	}
	return r.result(scriptErr)
}

// userStop is closed for either kind of cancel: both stop the user script.
func (r *Runner) userStop() <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		select {
		case <-r.cancel:
		case <-r.abort:
		}
		close(ch)
	}()
	return ch
}

func (r *Runner) canceled() bool { return isClosed(r.cancel) }
func (r *Runner) aborted() bool  { return isClosed(r.abort) }
func (r *Runner) stopped() bool  { return r.canceled() || r.aborted() }

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func system(err error) Result {
	return Result{State: "failed", FailureReason: "runner_system_failure", Err: err}
}

func (r *Runner) result(err error) Result {
	var bf *exitFailure
	switch {
	case err == nil:
		return Result{State: "success"}
	case r.stopped() || errors.Is(err, errCanceled):
		return Result{State: "canceled", FailureReason: "job_canceled", Err: errCanceled}
	case errors.As(err, &bf):
		return Result{State: "failed", FailureReason: "script_failure", ExitCode: bf.code, Err: err}
	}
	return system(err)
}

func (r *Runner) attempts(key string) int {
	for _, v := range r.vars {
		if v.Key == key {
			if n, err := strconv.Atoi(v.Value); err == nil {
				return min(max(n, 1), 10)
			}
		}
	}
	return 1
}

// prepare runs config_exec and prepare_exec, as one attempt of gitlab-runner's executor.Prepare.
func (r *Runner) prepare() error {
	var out strings.Builder
	if err := r.call(r.opts.Custom.Config, nil, &out, r.opts.Log, r.abort); err != nil {
		return fmt.Errorf("config_exec: %w", err)
	}
	var cfg struct {
		BuildsDir         string            `json:"builds_dir"`
		BuildsDirIsShared *bool             `json:"builds_dir_is_shared"`
		Hostname          string            `json:"hostname"`
		Driver            map[string]string `json:"driver"`
		JobEnv            map[string]string `json:"job_env"`
		Shell             string            `json:"shell"`
	}
	if s := strings.TrimSpace(out.String()); s != "" {
		if err := json.Unmarshal([]byte(s), &cfg); err != nil {
			return fmt.Errorf("error while parsing JSON output: %w", err)
		}
	}
	if cfg.BuildsDir == "" {
		return errors.New("the builds_dir is not configured")
	}
	if cfg.Driver != nil {
		fmt.Fprintf(r.opts.Log, "Using Custom executor with driver %s %s...\n", cfg.Driver["name"], cfg.Driver["version"])
	}
	r.jobEnv = cfg.JobEnv
	r.shell = cfg.Shell
	r.projectDir = path.Join(cfg.BuildsDir, r.opts.ProjectPath)
	if cfg.BuildsDirIsShared != nil && *cfg.BuildsDirIsShared {
		r.projectDir = path.Join(cfg.BuildsDir, r.opts.RunnerToken, strconv.Itoa(r.opts.ConcurrentProjectID), r.opts.ProjectPath)
	}
	r.vars = r.variables(cfg.BuildsDir)
	if err := r.call(r.opts.Custom.Prepare, nil, r.opts.Log, r.opts.Log, r.abort); err != nil {
		return fmt.Errorf("prepare_exec: %w", err)
	}
	return nil
}

// stage writes a stage's script to a new file and calls run_exec with it; stop, when closed,
// sends the driver SIGTERM.
func (r *Runner) stage(name, header, script string, stop <-chan struct{}) error {
	r.section(name, header)
	defer r.sectionEnd(name)
	dir, err := os.MkdirTemp(r.tempDir, "script")
	if err != nil {
		return err
	}
	p := filepath.Join(dir, "script")
	if err := os.WriteFile(p, []byte(script), 0o700); err != nil {
		return err
	}
	return r.call(r.opts.Custom.Run, []string{p, name}, r.opts.Log, r.opts.Log, stop)
}

func (r *Runner) cleanup() {
	if err := r.call(r.opts.Custom.Cleanup, nil, r.opts.RunnerLog, r.opts.RunnerLog, nil); err != nil {
		fmt.Fprintf(r.opts.Log, "WARNING: Cleanup script failed: %v\n", err)
	}
}

func (r *Runner) section(name, header string) {
	fmt.Fprintf(r.opts.Log, "section_start:%d:%s\r\x1b[0K%s%s%s\n", time.Now().Unix(), name, ansiBoldGreen, header, ansiReset)
}

func (r *Runner) sectionEnd(name string) {
	fmt.Fprintf(r.opts.Log, "section_end:%d:%s\r\x1b[0K\n", time.Now().Unix(), name)
}

// call runs one driver executable as gitlab-runner does: in its own process group, in the job's
// temp dir, stdin from /dev/null, with the runner's environment plus the fixed variables, job_env
// and every job variable as CUSTOM_ENV_*. A closed stop sends the group SIGTERM, then SIGKILL after
// the graceful timeout.
func (r *Runner) call(c Command, extra []string, stdout, stderr io.Writer, stop <-chan struct{}) error {
	if r.opts.Timed != nil {
		start := time.Now()
		name := c.role
		if len(extra) == 2 {
			name = extra[1]
		}
		defer func() { r.opts.Timed(name, time.Since(start)) }()
	}
	cmd := exec.Command(c.Exec, append(append([]string{}, c.Args...), extra...)...)
	cmd.Dir = r.tempDir
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = r.opts.Custom.ForceKillTimeout
	cmd.Env = r.environ()
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-stop:
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case err = <-done:
		case <-time.After(r.opts.Custom.GracefulKillTimeout):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			select {
			case err = <-done:
			case <-time.After(r.opts.Custom.ForceKillTimeout):
				return fmt.Errorf("failed to kill process PID=%d, likely process is dormant", cmd.Process.Pid)
			}
		}
	}
	if err == nil {
		return nil
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return err
	}
	switch ee.ExitCode() {
	case 1: // BUILD_FAILURE_EXIT_CODE
		return r.buildFailure()
	case 2: // SYSTEM_FAILURE_EXIT_CODE
		return err
	}
	return fmt.Errorf("unknown Custom executor executable exit code %d", ee.ExitCode())
}

// buildFailure reads the script's real exit code from BUILD_EXIT_CODE_FILE, as the runner does.
func (r *Runner) buildFailure() error {
	b, err := os.ReadFile(filepath.Join(r.tempDir, "build_exit_code"))
	if err != nil {
		return &exitFailure{code: 1}
	}
	first, _, _ := strings.Cut(string(b), "\n")
	n, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil {
		return fmt.Errorf("unknown Custom executor executable exit code 2")
	}
	return &exitFailure{code: n}
}
