package driver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/hearth-ci/hearth/cache"
	"github.com/hearth-ci/hearth/config"
	"github.com/hearth-ci/hearth/deploy"
	"github.com/hearth-ci/hearth/executor"
	"github.com/hearth-ci/hearth/jobcontainer"
	"github.com/hearth-ci/hearth/nixstore"
)

// Executor runs job containers. Prepare is called once per prepare attempt and must remove
// whatever an earlier attempt left; Run once per stage; Cleanup any number of times, including
// when Prepare never ran, and must succeed when there is nothing to remove.
type Executor interface {
	Prepare(ctx context.Context, job executor.JobSpec, log io.Writer) error
	Run(ctx context.Context, id, stage, script string, out io.Writer) (int, error)
	Cleanup(ctx context.Context, id string) error
	// BuildsDir is the host directory the job's container sees as its builds dir, or "" when the
	// job has none (prepare never ran).
	BuildsDir(id string) (string, error)
}

// Flusher pushes what jobs built to the binary cache; cache.Flusher is one.
type Flusher interface {
	// Flush pushes what is queued, waiting for what other pushers hold, and tells pushed of each
	// path it uploads, one at a time. It is called once per successful user script.
	Flush(ctx context.Context, pushed func(nixstore.PathInfo, cache.Stats)) (cache.DrainResult, error)
	// String names the cache for people.
	String() string
}

// Driver carries out the four stages of the custom-executor contract.
type Driver struct {
	Config     *config.Config
	Exec       Executor
	Invocation Invocation
	// Stdout is the job log.
	Stdout  io.Writer
	Version string
	// OpenFlusher connects to the binary cache; it is called only when a push is due.
	OpenFlusher func(ctx context.Context) (Flusher, error)
	// Store is the host's Nix store, where a system to deploy must be valid.
	Store Store
	// OpenDeployer makes the deployer for a job's deploys, recording origin on each target and
	// telling log of each target's progress; it is called only when the job asked for a deploy.
	OpenDeployer func(origin deploy.Origin, log func(target, line string)) Deployer
	// Metrics, when set, is told of each deploy's result. (Stage durations are recorded by the
	// caller, which times the whole process; pushes by the cache's Pusher.)
	Metrics Recorder
}

// configOutput is gitlab-runner's ConfigExecOutput.
type configOutput struct {
	BuildsDir         string            `json:"builds_dir"`
	CacheDir          string            `json:"cache_dir"`
	BuildsDirIsShared bool              `json:"builds_dir_is_shared"`
	Hostname          string            `json:"hostname,omitempty"`
	Driver            map[string]string `json:"driver"`
	Shell             string            `json:"shell"`
}

// ConfigStage prints the JSON gitlab-runner reads from config_exec. Each job container has its own
// /builds, so builds_dir_is_shared is false and the project dir is /builds/<group>/<project>.
func (d *Driver) ConfigStage() error {
	host, _ := os.Hostname()
	return json.NewEncoder(d.Stdout).Encode(configOutput{
		BuildsDir: jobcontainer.BuildsDir,
		CacheDir:  jobcontainer.CacheDir,
		Hostname:  host,
		Driver:    map[string]string{"name": "hearth", "version": d.Version},
		Shell:     "bash",
	})
}

// Prepare picks the job's environment by policy and starts its container.
func (d *Driver) Prepare(ctx context.Context) error {
	p, err := ReadPayload(d.Invocation.JobResponseFile)
	if err != nil {
		return executor.AtStep("payload", err)
	}
	env, err := chooseEnvironment(d.Config, p.Image.Name)
	if err != nil {
		return executor.AtStep("policy", err)
	}
	lim, err := limits(d.Config.Jobs, d.Invocation.Custom)
	if err != nil {
		return executor.AtStep("limits", err)
	}
	spec := executor.JobSpec{
		Limits:    lim,
		ID:        ContainerID(p),
		Job:       p.JobID(),
		Runner:    runnerKey(p, d.Invocation),
		Project:   fmt.Sprint(p.JobInfo.ProjectID),
		Protected: p.Protected(),
		Tier:      d.Config.Nix.TierFor(p.Protected()),
		Env:       env,
		Timeout:   time.Duration(p.RunnerInfo.Timeout) * time.Second,
	}
	for _, c := range p.Credentials {
		if c.Type == "registry" {
			spec.Credentials = append(spec.Credentials, executor.Credential{Registry: c.URL, Username: c.Username, Password: c.Password})
		}
	}
	what := env.StorePath
	if env.Image != "" {
		what = "image " + env.Image
	}
	fmt.Fprintf(d.Stdout, "Using hearth environment %s (%s)\n", env.Name, what)
	fmt.Fprintln(d.Stdout, describeTier(spec.Tier))
	fmt.Fprintln(d.Stdout, describeLimits(lim))
	warnOldDaemon(ctx, d.Stdout, d.Config.Jobs.StateDir, spec.Tier)
	return d.Exec.Prepare(ctx, spec, d.Stdout)
}

// Run runs one stage's script (a file on the host) in the job's container. Stage names hearth
// does not know run like any other: gitlab-runner adds stages over time.
func (d *Driver) Run(ctx context.Context, scriptPath, stage string) error {
	// A code left by an earlier stage must not be read as this one's.
	if d.Invocation.BuildExitCodeFile != "" {
		if err := os.Remove(d.Invocation.BuildExitCodeFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("clear BUILD_EXIT_CODE_FILE: %w", err)
		}
	}
	p, err := ReadPayload(d.Invocation.JobResponseFile)
	if err != nil {
		return err
	}
	script, err := os.ReadFile(scriptPath)
	if err != nil {
		return fmt.Errorf("read the %s script: %w", stage, err)
	}
	if isUserScript(stage) {
		dir, ok, err := d.requestsDir(p)
		if err != nil {
			return err
		}
		if ok {
			clearRequests(dir)
		}
	}
	code, err := d.Exec.Run(ctx, ContainerID(p), stage, string(script), d.Stdout)
	if err != nil {
		return err
	}
	if err := d.Invocation.writeBuildExitCode(code); err != nil {
		return err
	}
	if code != 0 {
		// The script's own output says why.
		return &Failure{Kind: BuildFailure, Err: fmt.Errorf("%s: exit code %d", stage, code), Logged: true}
	}
	if isUserScript(stage) {
		if err := d.push(ctx, p); err != nil {
			return err
		}
		return d.deploys(ctx, p)
	}
	return nil
}

// isUserScript reports whether stage is the job's script, after which what it built is pushed.
func isUserScript(stage string) bool {
	return stage == "build_script" || stage == "step_script"
}

// push sends what the job built to the cache, if policy allows. The policy reads the payload's
// protected flag, which a job cannot set. A failed push is a warning, unless the cache is
// required: then it is the runner's failure, not the job's.
func (d *Driver) push(ctx context.Context, p *Payload) error {
	c := d.Config.Cache
	switch {
	case c.Push == "never" || d.OpenFlusher == nil:
		return nil
	case d.Config.Nix.Tiered() && !p.Protected():
		// What the job built is in the unprotected tier's store, which the pusher never reads;
		// a flush here would only push the protected jobs' paths.
		fmt.Fprintf(d.Stdout, "Not pushing to the binary cache: %s is not a protected ref, and what this job built stays in the unprotected tier's store\n", p.GitInfo.Ref)
		return nil
	case c.Push == "protected" && !p.Protected():
		fmt.Fprintf(d.Stdout, "Not pushing to the binary cache: %s is not a protected ref\n", p.GitInfo.Ref)
		return nil
	}
	f, err := d.OpenFlusher(ctx)
	if err == nil {
		err = flush(ctx, d.Stdout, f)
	}
	if err == nil {
		return nil
	}
	if c.Required {
		return fmt.Errorf("push to the binary cache (required by [cache] required): %w", err)
	}
	warning(d.Stdout, "the binary cache push failed; the paths stay queued for the next push: %v", err)
	return nil
}

// Cleanup removes the job's container and everything that belongs to it.
func (d *Driver) Cleanup(ctx context.Context) error {
	p, err := ReadPayload(d.Invocation.JobResponseFile)
	if err != nil {
		return err
	}
	return d.Exec.Cleanup(ctx, ContainerID(p))
}

// ContainerID names the job's container from the payload alone, so that every stage computes the
// same name and no job variable can steer it onto another job's container. Job ids are unique
// within a GitLab instance; the instance is told apart by its host.
func ContainerID(p *Payload) string {
	return "hearth-" + p.JobID() + "-" + instance(p)
}

func instance(p *Payload) string {
	host := p.GitInfo.RepoURL
	if u, err := url.Parse(p.GitInfo.RepoURL); err == nil && u.Host != "" {
		host = u.Hostname()
	}
	h := sha256.Sum256([]byte(host))
	return hex.EncodeToString(h[:4])
}

// runnerKey groups builds dirs: per GitLab instance, then per runner. The runner's short token is a
// variable, so a job could change it, but only to move itself among its own project's dirs.
func runnerKey(p *Payload, inv Invocation) string {
	token := strings.TrimSpace(inv.Custom["CI_RUNNER_SHORT_TOKEN"])
	if token == "" {
		token = "runner"
	}
	return instance(p) + "-" + token
}
