// Package executor runs job containers on containerd: a read-only skeleton root (or an OCI image),
// the host's Nix store and daemon socket, persistent builds dirs, a user namespace, and the agent
// that runs each stage. It knows nothing of GitLab.
package executor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/identifiers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	gocni "github.com/containerd/go-cni"

	"github.com/hearth-ci/hearth/config"
	"github.com/hearth-ci/hearth/executor/agent"
	"github.com/hearth-ci/hearth/jobcontainer"
)

// Label keys put on every container and snapshot hearth creates, so that whatever a crash leaves
// behind can be found again.
const (
	LabelJob         = "hearth.job"
	LabelRunner      = "hearth.runner"
	LabelProject     = "hearth.project"
	LabelCreated     = "hearth.created"
	LabelEnvironment = "hearth.environment"
)

// Executor creates, runs and removes job containers.
type Executor struct {
	cfg *config.Config
	// Binary is the host path of the hearth executable bind-mounted into each container as its
	// agent. It defaults to the running executable.
	Binary string

	once      sync.Once
	client    *containerd.Client
	clientErr error

	cniOnce sync.Once
	cni     gocni.CNI
	cniErr  error
}

// New returns an Executor for cfg. It does not connect to containerd until it needs to.
func New(cfg *config.Config) *Executor {
	return &Executor{cfg: cfg}
}

// Environment is what a job's container is made of, after policy has chosen it.
type Environment struct {
	// Name is the configured environment's name, or the image reference for an allowed image.
	Name      string
	StorePath string
	Image     string
	Mounts    []config.Mount
	// Untrusted is set when the job chose the environment itself (an image matched by the
	// allowlist): a broken environment is then the job's fault rather than the runner's.
	Untrusted bool
}

// Credential is a registry login for pulling an image.
type Credential struct {
	Registry, Username, Password string
}

// JobSpec describes one job's container.
type JobSpec struct {
	// ID names the container and every resource that belongs to it.
	ID string
	// Job, Runner and Project become labels; Runner and Project also choose the builds dir.
	Job, Runner, Project string
	// Protected jobs get builds and cache dirs apart from the others of their project, so that a
	// job on an unprotected ref cannot leave something (a git hook, a poisoned cache) that a job
	// with the protected ref's secrets later runs.
	Protected bool
	// Tier is the Nix daemon and store the job builds with: the protected tier's for a job on a
	// protected ref, the unprotected tier's for any other (or the one shared tier).
	Tier        config.Tier
	Limits      config.Limits
	Env         Environment
	Credentials []Credential
	// Timeout is the job's timeout (from its payload): gc removes a job that outlives it by more
	// than its idle limit, whatever else says it is busy.
	Timeout time.Duration
}

// JobError is an error caused by what the job asked for (a missing image, an image without
// bash), as opposed to a fault of the runner host.
type JobError struct{ Err error }

func (e *JobError) Error() string { return e.Err.Error() }
func (e *JobError) Unwrap() error { return e.Err }

// StepError says which step of a prepare failed (one of metrics.PrepareReasons), for the
// operators' metrics. It says nothing more than the error it wraps.
type StepError struct {
	Step string
	Err  error
}

func (e *StepError) Error() string { return e.Err.Error() }
func (e *StepError) Unwrap() error { return e.Err }

// AtStep marks err as failing at step, unless it already names a step (the innermost step is the
// one that failed). A nil err stays nil.
func AtStep(step string, err error) error {
	var se *StepError
	if err == nil || errors.As(err, &se) {
		return err
	}
	return &StepError{Step: step, Err: err}
}

// StepOf is the step err was marked with, or "".
func StepOf(err error) string {
	var se *StepError
	if errors.As(err, &se) {
		return se.Step
	}
	return ""
}

// ValidateID checks that id can name a container.
func ValidateID(id string) error {
	if err := identifiers.Validate(id); err != nil {
		return fmt.Errorf("job id %q cannot name a container: %w", id, err)
	}
	return nil
}

func (e *Executor) ctx(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, e.cfg.Containerd.Namespace)
}

// connect returns a client whose daemon has answered once.
func (e *Executor) connect(ctx context.Context) (*containerd.Client, error) {
	e.once.Do(func() {
		addr := e.cfg.Containerd.Address
		// A containerd that has not answered in 5 s is down or wedged: say so rather than let a
		// prepare hang until gitlab-runner gives up on it.
		c, err := containerd.New(addr, containerd.WithDefaultNamespace(e.cfg.Containerd.Namespace), containerd.WithTimeout(5*time.Second))
		if err == nil {
			vctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err = c.Version(vctx)
			cancel()
			if err != nil {
				c.Close()
			}
		}
		if err != nil {
			e.clientErr = fmt.Errorf("containerd at %s is unreachable (is containerd running, and is [containerd] address right?): %w", addr, err)
			return
		}
		e.client = c
	})
	return e.client, e.clientErr
}

// Close releases the connection to containerd.
func (e *Executor) Close() error {
	if e.client != nil {
		return e.client.Close()
	}
	return nil
}

func (e *Executor) binary() (string, error) {
	if e.Binary != "" {
		return e.Binary, nil
	}
	p, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find the hearth executable: %w", err)
	}
	return filepath.EvalSymlinks(p)
}

// jobDir is the host directory holding one job's state and its agent's socket.
func (e *Executor) jobDir(id string) string {
	return filepath.Join(e.cfg.Jobs.StateDir, "jobs", id)
}

func (e *Executor) agentSocket(id string) string {
	return filepath.Join(e.jobDir(id), "agent", jobcontainer.AgentSocketName)
}

// Run runs one stage's script in the job's container, streaming its output (stdout and stderr
// together, in order) to out. The exit code is the script's; an error means the stage could not
// be run or its end was not seen.
func (e *Executor) Run(ctx context.Context, id, stage, script string, out io.Writer) (int, error) {
	sock := e.agentSocket(id)
	if _, err := os.Lstat(sock); err != nil {
		return 0, fmt.Errorf("job container %s is not running (prepare did not run, or cleanup already ran): %w", id, err)
	}
	// After SIGTERM the agent gives the stage stop_timeout, then kills it; 3 s more covers the
	// kill and the exit frame's way back. stop_timeout is at most 6 s, so a stage always ends
	// within the 10 s gitlab-runner waits after SIGTERM.
	grace := e.cfg.Jobs.StopTimeout.Std() + 3*time.Second
	defer e.active(id)()
	ooms := e.oomKills(id)
	st, _ := e.readState(id)
	daemon, hadDaemon := markOf(st.DaemonSocket)
	code, err := agent.Run(ctx, sock, agent.Request{Stage: stage, Script: script}, out, grace)
	if err != nil || code != 0 {
		if ooms >= 0 && e.oomKills(id) > ooms && st.Memory > 0 {
			// The kernel killed part of the stage, or the agent itself: that is why it failed.
			return 0, memoryLimitError(stage, st.Memory)
		}
		if ferr := e.hostFault(st, stage, daemon, hadDaemon); ferr != nil {
			return 0, ferr
		}
	}
	if err != nil {
		return 0, fmt.Errorf("run stage %s in %s: %w", stage, id, err)
	}
	return code, nil
}
