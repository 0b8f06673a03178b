package executor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/hearth-ci/hearth/executor/agent"
	"github.com/hearth-ci/hearth/jobcontainer"
)

// agentStartTimeout bounds how long prepare waits for the agent to answer. It is up in a few
// milliseconds; 15 s leaves room for a host swapping under load before the prepare counts as
// failed (and is retried).
const agentStartTimeout = 15 * time.Second

// Prepare creates and starts the job's container and waits until its agent answers. Leftovers of
// an earlier attempt with the same id are removed first; when Prepare fails, it removes what it
// made. Progress lines go to log.
func (e *Executor) Prepare(ctx context.Context, job JobSpec, log io.Writer) (err error) {
	// step is where the prepare is, which its error names for the operators' metrics.
	step := "config"
	defer func() { err = AtStep(step, err) }()
	if err := ValidateID(job.ID); err != nil {
		return err
	}
	if sock := e.agentSocket(job.ID); len(sock) > 107 {
		return fmt.Errorf("the agent socket path %s is longer than a unix socket allows (107 bytes): choose a shorter [jobs] state_dir", sock)
	}
	if job.Tier.DaemonSocket == "" {
		return fmt.Errorf("job %s has no Nix tier", job.ID)
	}
	step = "nix-daemon"
	if _, err := os.Stat(job.Tier.DaemonSocket); err != nil {
		return fmt.Errorf("the %s tier's nix-daemon socket %s is missing: is that nix-daemon running? %w", job.Tier.Name, job.Tier.DaemonSocket, err)
	}
	step = "containerd"
	client, err := e.connect(ctx)
	if err != nil {
		return err
	}
	if err := e.Cleanup(ctx, job.ID); err != nil {
		return fmt.Errorf("remove leftovers of an earlier attempt: %w", err)
	}
	ctx = e.ctx(ctx)
	created := time.Now().UTC()
	defer func() {
		if err != nil {
			if cerr := e.Cleanup(context.WithoutCancel(ctx), job.ID); cerr != nil {
				err = fmt.Errorf("%w (and removing what was made failed: %v)", err, cerr)
			}
		}
	}()
	step = "state"
	dirs, err := e.hostDirs(job, created)
	if err != nil {
		return err
	}
	defer e.active(job.ID)()
	if job.Env.Image != "" {
		// The first job of an image remaps its root to the user namespace, in a snapshot that
		// later jobs share: one prepare at a time does that, and a cancelled prepare does not
		// stop it half-way (containerd would leave the half-made snapshot in the way).
		step = "environment"
		unlock, err := e.lock(ctx, "image-"+job.Env.Image)
		if err != nil {
			return err
		}
		defer unlock()
		// Long enough for a pull of a large image over a slow link, short enough that a wedged
		// registry does not hold the image's lock for ever.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), 15*time.Minute)
		defer cancel()
	}
	// containerOptions marks its own steps: the environment, the network.
	opts, err := e.containerOptions(ctx, client, job, dirs, created, log)
	if err != nil {
		return err
	}
	step = "containerd"
	jobDir := e.jobDir(job.ID)
	fmt.Fprintf(log, "Starting job container %s (environment %s)\n", job.ID, job.Env.Name)
	ctr, err := client.NewContainer(ctx, job.ID, opts...)
	if err != nil {
		return fmt.Errorf("create container %s: %w", job.ID, err)
	}
	task, err := ctr.NewTask(ctx, cio.LogFile(filepath.Join(jobDir, "agent.log")))
	if err != nil {
		if strings.Contains(err.Error(), "error setting rlimit") {
			return fmt.Errorf("the container runtime could not give job %s its open-files limit of %d: that is above containerd's own hard limit; raise LimitNOFILE of containerd's unit, or lower [jobs] nofile and nofile_max (%w)", job.ID, job.Limits.Nofile, err)
		}
		return envError(job.Env, fmt.Errorf("create task for %s: %w", job.ID, err))
	}
	exited, err := task.Wait(ctx)
	if err != nil {
		return fmt.Errorf("wait on task %s: %w", job.ID, err)
	}
	if err := task.Start(ctx); err != nil {
		return envError(job.Env, fmt.Errorf("start task %s: %w", job.ID, err))
	}
	step = "agent"
	return e.awaitAgent(ctx, job, exited)
}

// jobDirs are the host directories of one job.
type jobDirs struct {
	agent, builds, cache string
}

// hostDirs records the job's state before anything else is made, so that an interrupted prepare
// leaves state that cleanup and gc can follow; then it claims a builds dir and makes the dirs the
// container mounts, owned by the container's root.
func (e *Executor) hostDirs(job JobSpec, created time.Time) (jobDirs, error) {
	var d jobDirs
	jobDir := e.jobDir(job.ID)
	d.agent = filepath.Join(jobDir, "agent")
	if err := os.MkdirAll(filepath.Dir(jobDir), 0o755); err != nil {
		return d, fmt.Errorf("make state dir: %w", err)
	}
	if err := os.MkdirAll(d.agent, 0o700); err != nil {
		return d, fmt.Errorf("make job dir: %w", err)
	}
	st := state{ID: job.ID, Created: created, Timeout: job.Timeout, Memory: job.Limits.Memory, DaemonSocket: job.Tier.DaemonSocket}
	if err := e.writeState(st); err != nil {
		return d, err
	}
	uid := e.cfg.Jobs.UIDMapStart
	if err := os.Chown(d.agent, int(uid), int(uid)); err != nil {
		return d, fmt.Errorf("hand the agent dir to the job's uid: %w", err)
	}
	var err error
	d.builds, st.Claim, err = e.claimBuildsDir(job.ID, job.Runner, projectDir(job))
	if err != nil {
		return d, err
	}
	if err := e.writeState(st); err != nil {
		return d, err
	}
	d.cache = filepath.Join(e.cfg.Jobs.CacheRoot, pathPart(job.Runner), projectDir(job))
	for _, dir := range []string{d.builds, d.cache} {
		if err := ownedDir(dir, uid); err != nil {
			return d, fmt.Errorf("prepare %s: %w", dir, err)
		}
	}
	return d, nil
}

// containerOptions describes the job's container: its root (the skeleton, or the image's root
// remapped to the user namespace), its mounts, its user namespace, network and limits, and the
// agent as its process.
func (e *Executor) containerOptions(ctx context.Context, client *containerd.Client, job JobSpec, dirs jobDirs, created time.Time, log io.Writer) ([]containerd.NewContainerOpts, error) {
	bin, err := e.binary()
	if err != nil {
		return nil, AtStep("agent", err)
	}
	labels := map[string]string{
		LabelJob:         job.Job,
		LabelRunner:      job.Runner,
		LabelProject:     job.Project,
		LabelCreated:     created.Format(time.RFC3339),
		LabelEnvironment: job.Env.Name,
	}
	idmap := e.idMap()
	specOpts := []oci.SpecOpts{oci.WithDefaultUnixDevices}
	containerOpts := []containerd.NewContainerOpts{containerd.WithContainerLabels(labels)}
	env := []string{"HOME=/root", "USER=root", "NIX_REMOTE=daemon"}
	switch {
	case job.Env.StorePath != "":
		if err := e.environmentIn(ctx, job.Tier, job.Env, log); err != nil {
			return nil, AtStep("environment", err)
		}
		root, err := e.skeleton(job.Env)
		if err != nil {
			return nil, AtStep("environment", err)
		}
		specOpts = append(specOpts, oci.WithRootFSPath(root), oci.WithRootFSReadonly())
		env = append(env, "PATH="+job.Env.StorePath+"/bin")
	case job.Env.Image != "":
		img, err := e.ensureImage(ctx, client, job.Env, job.Credentials, log)
		if err != nil {
			return nil, AtStep("environment", err)
		}
		specOpts = append(specOpts, oci.WithImageConfig(img), oci.WithUIDGID(0, 0))
		containerOpts = append(containerOpts, containerd.WithImage(img),
			containerd.WithUserNSRemappedSnapshot(job.ID, img, idmap, idmap))
	default:
		return nil, fmt.Errorf("environment %s has neither store_path nor image", job.Env.Name)
	}

	mounts := []specs.Mount{
		{Destination: jobcontainer.StoreDir, Type: "bind", Source: job.Tier.StoreDir(), Options: []string{"rbind", "ro", "nosuid", "nodev"}},
		{Destination: jobcontainer.DaemonSocket, Type: "bind", Source: job.Tier.DaemonSocket, Options: []string{"bind"}},
		{Destination: jobcontainer.AgentBinary, Type: "bind", Source: bin, Options: []string{"bind", "ro"}},
		{Destination: jobcontainer.AgentDir, Type: "bind", Source: dirs.agent, Options: []string{"bind", "rw"}},
		{Destination: jobcontainer.BuildsDir, Type: "bind", Source: dirs.builds, Options: []string{"rbind", "rw"}},
		{Destination: jobcontainer.CacheDir, Type: "bind", Source: dirs.cache, Options: []string{"rbind", "rw"}},
		{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: tmpfsOptions(job.Limits, "1777")},
		{Destination: "/root", Type: "tmpfs", Source: "tmpfs", Options: tmpfsOptions(job.Limits, "0700")},
	}
	for _, m := range job.Env.Mounts {
		mounts = append(mounts, specs.Mount{Destination: m.Container, Type: "bind", Source: m.Host, Options: []string{"rbind", "ro", "nosuid", "nodev"}})
	}
	switch e.cfg.Jobs.Network {
	case "host":
		// In a user namespace sysfs can only be mounted by the owner of the network namespace,
		// which the host's is not; a read-only bind of the host's /sys shows the same thing.
		specOpts = append(specOpts, oci.WithHostNamespace(specs.NetworkNamespace), withSysBind,
			oci.WithHostHostsFile, oci.WithHostResolvconf)
	case "bridge":
		nsPath, err := e.attachBridge(ctx, job.ID)
		if err != nil {
			return nil, AtStep("network", err)
		}
		resolv, hosts, err := e.writeResolvConf(job.ID, log)
		if err != nil {
			return nil, AtStep("network", err)
		}
		// The namespace is the host's (see attachBridge), so sysfs is bound as for host jobs.
		specOpts = append(specOpts, oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: nsPath}), withSysBind)
		mounts = append(mounts,
			specs.Mount{Destination: "/etc/resolv.conf", Type: "bind", Source: resolv, Options: []string{"bind", "ro"}},
			specs.Mount{Destination: "/etc/hosts", Type: "bind", Source: hosts, Options: []string{"bind", "ro"}})
	}
	specOpts = append(specOpts,
		withOwnCgroup,
		oci.WithMounts(mounts),
		oci.WithUserNamespace(idmap, idmap),
		oci.WithHostname(hostname(job.ID)),
		oci.WithProcessArgs(agent.Options{Socket: jobcontainer.AgentSocket, StopTimeout: e.cfg.Jobs.StopTimeout.Std(), Job: job.ID}.Args(jobcontainer.AgentBinary)...),
		oci.WithProcessCwd("/"),
		oci.WithEnv(env),
		oci.WithNoNewPrivileges,
		withLimits(job.Limits),
		oci.WithDroppedCapabilities([]string{"CAP_NET_RAW", "CAP_MKNOD", "CAP_AUDIT_WRITE"}),
		// Last: the profile admits syscalls according to the capabilities left.
		seccomp.WithDefaultProfile(),
	)
	return append(containerOpts, containerd.WithNewSpec(specOpts...)), nil
}

// withSysBind puts a read-only bind of the host's /sys where the spec mounts sysfs, for jobs in a
// network namespace the job's user namespace does not own (the host's, or the one hearth makes
// for the bridge): the kernel lets only the owner of a network namespace mount sysfs. It has to
// be recursive, as in a user namespace the kernel refuses a bind that would uncover what the
// host's submounts hide; withOwnCgroup then covers the host's cgroup tree.
func withSysBind(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
	for i, m := range s.Mounts {
		if m.Destination == "/sys" {
			s.Mounts[i] = specs.Mount{Destination: "/sys", Type: "bind", Source: "/sys", Options: []string{"rbind", "ro", "nosuid", "nodev", "noexec"}}
			return nil
		}
	}
	return errors.New("the container spec has no /sys mount to replace")
}

// withOwnCgroup mounts the container's own cgroups, read-only, at /sys/fs/cgroup, right after
// /sys: the job sees its own limits there, and nothing of the host's cgroup tree (which other
// jobs, their names and their use are in).
func withOwnCgroup(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
	for i, m := range s.Mounts {
		if m.Destination == "/sys" {
			cg := specs.Mount{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"ro", "nosuid", "noexec", "nodev", "relatime"}}
			s.Mounts = append(s.Mounts[:i+1], append([]specs.Mount{cg}, s.Mounts[i+1:]...)...)
			return nil
		}
	}
	return errors.New("the container spec has no /sys mount")
}

// awaitAgent waits until the agent answers a ping and says the environment can run stages.
func (e *Executor) awaitAgent(ctx context.Context, job JobSpec, exited <-chan containerd.ExitStatus) error {
	sock := e.agentSocket(job.ID)
	start := time.Now()
	deadline := start.Add(agentStartTimeout)
	for {
		// The agent is usually up within a few milliseconds: look often at first.
		delay := time.Millisecond
		if time.Since(start) > time.Second {
			delay = 20 * time.Millisecond
		}
		if _, err := os.Lstat(sock); err == nil {
			// A listening agent answers a ping at once; 5 s is for a host under load.
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			st, err := agent.Ping(pctx, sock)
			cancel()
			if err != nil {
				return fmt.Errorf("the agent in %s does not answer: %w", job.ID, err)
			}
			if st.Problem != "" {
				return envError(job.Env, fmt.Errorf("environment %s cannot run jobs: %s", job.Env.Name, st.Problem))
			}
			return nil
		}
		select {
		case st := <-exited:
			return envError(job.Env, fmt.Errorf("the agent in %s exited with status %d before it was ready: %s", job.ID, st.ExitCode(), e.agentLog(job.ID)))
		case <-ctx.Done():
			return fmt.Errorf("stopped waiting for the agent in %s to start: %w", job.ID, ctx.Err())
		case <-time.After(delay):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the agent in %s did not start within %s: %s", job.ID, agentStartTimeout, e.agentLog(job.ID))
		}
	}
}

// agentLog returns the end of what the agent wrote, for error messages.
func (e *Executor) agentLog(id string) string {
	b, err := os.ReadFile(filepath.Join(e.jobDir(id), "agent.log"))
	if err != nil || len(b) == 0 {
		return "it wrote nothing"
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return "it wrote: " + strings.TrimSpace(string(b))
}

func (e *Executor) idMap() []specs.LinuxIDMapping {
	return []specs.LinuxIDMapping{{ContainerID: 0, HostID: e.cfg.Jobs.UIDMapStart, Size: e.cfg.Jobs.UIDMapSize}}
}

// envError marks err as the job's fault when the job chose the environment.
func envError(env Environment, err error) error {
	if env.Untrusted {
		return AtStep("environment", &JobError{Err: err})
	}
	return err
}

// hostname is the container's hostname: the id, cut to the 64 bytes a hostname may have.
func hostname(id string) string {
	if len(id) > 64 {
		return id[:64]
	}
	return id
}
