// Package testenv starts the real parts hearth runs on — a private containerd and a private
// nix-daemon with the sandbox on — and makes the store paths a job environment needs, without
// nixpkgs: busybox, bash and Nix itself from Debian's packages, added to the store. The tests, the
// demo and the benchmarks all use it.
package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hearth-ci/hearth/nix/signing"
)

// Parts is a running test environment: the real parts hearth runs on, started for tests.
type Parts struct {
	// Dir holds everything the environment made; Stop removes it.
	Dir              string
	ContainerdSocket string
	// Daemon is the first nix-daemon, whose methods are the environment's own (parts.Nix,
	// parts.BuildChain). A test that reads what a daemon logged or queued starts its own with
	// NewDaemon, on the same store.
	*Daemon
	// Tools is a store path with busybox applets, bash and Nix's files; Environment is the store path
	// a job environment points at (its bin/ has all of those plus working nix commands).
	Tools, Environment string
	// Hearth is the hearth binary built from this checkout.
	Hearth string
	// TeamCache is a file:// cache directory the daemon may substitute from when a client asks
	// (it is among its trusted-substituters), and TeamKey the secret key file its narinfos are
	// signed with (its public half is among the daemon's trusted-public-keys).
	TeamCache, TeamKey string

	// Bridge and BridgeSubnet are the bridge network of configs from Config: a bridge and subnet of
	// the environment's own (hbr<X>, 10.218.<X>.0/24), so that environments on one machine, and a
	// runner's own hearth0, never hand out the same address. BridgeDNS, when set, are the name
	// servers those configs give jobs on it.
	Bridge, BridgeSubnet string
	BridgeDNS            []string

	// GCRoots is the directory among the system store's GC roots where hearth's configs from
	// Config root what they need ([nix] gc_roots_dir); Stop removes it.
	GCRoots string

	containerd     *exec.Cmd
	containerdArgs []string
	containerdEnv  []string

	teamPublic string
	nixConf    string
	procs      []*exec.Cmd
	daemons    int
	// nixRoot, when NixRootEnv is set, is the command line daemons start under.
	nixRoot []string
}

// Options adjust Start.
type Options struct {
	// NixConf is appended to the daemon's nix.conf.
	NixConf string
	// NoContainerd leaves containerd out, for tests of the cache alone.
	NoContainerd bool
}

// Start builds hearth and starts containerd and nix-daemon under a new directory. Stop undoes it.
func Start(opts Options) (parts *Parts, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the test environment needs root (containerd, user namespaces, nix-daemon)")
	}
	for _, tool := range []string{"containerd", "containerd-shim-runc-v2", "runc", "nix-daemon", "nix-store", "busybox", "ldd"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s is not installed: run ./ci.sh setup (or apt-get install containerd runc nix-bin busybox-static bash-static)", tool)
		}
	}
	if _, err := os.Stat("/bin/bash-static"); err != nil {
		return nil, errors.New("bash-static is not installed: apt-get install bash-static")
	}
	// Short paths: unix socket paths must stay under 108 bytes.
	dir, err := os.MkdirTemp("", "hearth-")
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	parts = &Parts{Dir: dir, GCRoots: "/nix/var/nix/gcroots/hearth-test-" + filepath.Base(dir)}
	x := claimBridge()
	parts.Bridge, parts.BridgeSubnet = fmt.Sprintf("hbr%d", x), fmt.Sprintf("10.218.%d.0/24", x)
	defer func() {
		if err != nil {
			parts.Stop()
			parts = nil
		}
	}()
	if parts.Hearth, err = BuildHearth(filepath.Join(dir, "bin", "hearth")); err != nil {
		return parts, err
	}
	if root := os.Getenv(NixRootEnv); root != "" {
		if err := parts.useNixRoot(root); err != nil {
			return parts, err
		}
	}
	if !opts.NoContainerd {
		if err := parts.startContainerd(); err != nil {
			return parts, err
		}
	}
	if err := parts.startNixDaemon(opts.NixConf); err != nil {
		return parts, err
	}
	if err := parts.makeStorePaths(); err != nil {
		return parts, err
	}
	return parts, nil
}

// ModuleRoot is the directory of this checkout's go.mod.
func ModuleRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("cannot locate the source tree")
	}
	dir := filepath.Dir(file)
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above " + file)
		}
		dir = parent
	}
}

// BuildHearth builds a static hearth binary at out. Static, because the binary also runs inside job
// containers as their agent, where there is no /lib.
func BuildHearth(out string) (string, error) { return BuildStatic("./cmd/hearth", out) }

// BuildStatic builds the command in package pkg (a path relative to the module root) as a static
// binary at out.
func BuildStatic(pkg, out string) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build %s: %v\n%s", pkg, err, b)
	}
	return out, nil
}

func (e *Parts) startContainerd() error {
	d := filepath.Join(e.Dir, "containerd")
	if err := os.MkdirAll(d, 0o755); err != nil {
		return err
	}
	e.ContainerdSocket = filepath.Join(d, "containerd.sock")
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
`, filepath.Join(d, "root"), filepath.Join(d, "state"), e.ContainerdSocket)
	if err := os.WriteFile(filepath.Join(d, "config.toml"), []byte(cfg), 0o644); err != nil {
		return err
	}
	// HEARTH_TEST_CONTAINERD names a directory with another containerd and its shim (a 2.x
	// build, say): the tests then run against that daemon instead of Debian's 1.6.
	environ := os.Environ()
	bin := "containerd"
	if alt := os.Getenv("HEARTH_TEST_CONTAINERD"); alt != "" {
		bin = filepath.Join(alt, "containerd")
		environ = append(environ, "PATH="+alt+":"+os.Getenv("PATH"))
	}
	cmd, err := start(filepath.Join(d, "containerd.log"), environ, bin, "--config", filepath.Join(d, "config.toml"))
	if err != nil {
		return err
	}
	e.containerd = cmd
	e.containerdArgs = append([]string{}, cmd.Args...)
	e.containerdEnv = environ
	return waitSocket(e.ContainerdSocket, 20*time.Second)
}

// RestartContainerd stops the private containerd and starts it again, as a host's containerd
// restarts: the shims, and with them the job containers, live on.
func (e *Parts) RestartContainerd() error {
	if e.containerd == nil {
		return errors.New("this environment has no containerd")
	}
	stop(e.containerd)
	os.Remove(e.ContainerdSocket)
	cmd, err := start(filepath.Join(e.Dir, "containerd", "containerd.log.restarted"), e.containerdEnv, e.containerdArgs...)
	if err != nil {
		return err
	}
	e.containerd = cmd
	return waitSocket(e.ContainerdSocket, 20*time.Second)
}

// startNixDaemon makes the team cache and its key, then starts the environment's first daemon.
func (e *Parts) startNixDaemon(extra string) error {
	d := filepath.Join(e.Dir, "nix")
	e.TeamCache = filepath.Join(d, "team-cache")
	if err := os.MkdirAll(e.TeamCache, 0o755); err != nil {
		return err
	}
	key, err := signing.Generate("hearth-team-1")
	if err != nil {
		return err
	}
	e.teamPublic = key.Public().String()
	e.TeamKey = filepath.Join(d, "team-key.secret")
	if err := os.WriteFile(e.TeamKey, []byte(key.String()+"\n"), 0o600); err != nil {
		return err
	}
	e.nixConf = extra
	e.Daemon, err = e.newDaemon("nix")
	return err
}

func (e *Parts) spawn(logPath string, environ []string, args ...string) error {
	cmd, err := start(logPath, environ, args...)
	if err != nil {
		return err
	}
	e.procs = append(e.procs, cmd)
	return nil
}

// start runs a server in a process group of its own, with its output in logPath.
func start(logPath string, environ []string, args ...string) (*exec.Cmd, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = environ
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", args[0], err)
	}
	logf.Close()
	return cmd, nil
}

// waitSocket waits until a server accepts connections on the unix socket at path.
func waitSocket(path string, timeout time.Duration) error {
	return waitListening("unix", path, timeout)
}

// waitListening waits until a server accepts connections on addr.
func waitListening(network, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.Dial(network, addr)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not accept connections within %s: %w", addr, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop ends the daemons, and the shims of the private containerd (they outlive it by design), and
// removes the directory.
func (e *Parts) Stop() {
	if e.Daemon != nil {
		e.Daemon.Stop() // started after containerd, stopped before it
	}
	for i := len(e.procs) - 1; i >= 0; i-- {
		stop(e.procs[i])
	}
	if e.containerd != nil {
		stop(e.containerd)
	}
	if e.ContainerdSocket != "" {
		for _, pid := range ProcessesMatching(e.ContainerdSocket) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	_ = os.RemoveAll(e.Dir)
	_ = os.RemoveAll(e.GCRoots)
	if e.Bridge != "" {
		_ = exec.Command("ip", "link", "del", e.Bridge).Run()
		removeBridgeRules(e.Bridge)
		releaseBridge(e.Bridge)
	}
}

// claimBridge picks an X for a bridge hbr<X> no running environment uses, holding a lock file
// under /run/hearth-test-bridges until Stop.
func claimBridge() int {
	dir := "/run/hearth-test-bridges"
	_ = os.MkdirAll(dir, 0o755)
	for x := 1; x <= 250; x++ {
		f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("hbr%d", x)), os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			continue
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			continue
		}
		bridgeLocks[fmt.Sprintf("hbr%d", x)] = f // held until Stop, or until the process ends
		// What a run that died left on it goes with it.
		_ = exec.Command("ip", "link", "del", fmt.Sprintf("hbr%d", x)).Run()
		return x
	}
	return 250
}

var bridgeLocks = map[string]*os.File{}

// removeBridgeRules removes the iptables chains hearth made for a bridge, and the jumps to them.
func removeBridgeRules(bridge string) {
	in, fwd := "HEARTH-IN-"+bridge, "HEARTH-FWD-"+bridge
	for _, args := range [][]string{
		{"-D", "INPUT", "-i", bridge, "-j", in},
		{"-D", "FORWARD", "-i", bridge, "-j", fwd},
		{"-D", "CNI-ADMIN", "-i", bridge, "-j", fwd},
		{"-F", in}, {"-X", in}, {"-F", fwd}, {"-X", fwd},
	} {
		_ = exec.Command("iptables", args...).Run()
	}
}

func releaseBridge(name string) {
	if f := bridgeLocks[name]; f != nil {
		f.Close()
		delete(bridgeLocks, name)
	}
}

// stop ends a server's process group: SIGTERM, then SIGKILL after 10 s.
func stop(p *exec.Cmd) {
	_ = syscall.Kill(-p.Process.Pid, syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-p.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// ProcessesMatching lists processes whose command line contains s.
func ProcessesMatching(s string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	self := os.Getpid()
	for _, ent := range entries {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if strings.Contains(strings.ReplaceAll(string(b), "\x00", " "), s) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// Ctr runs Debian's ctr against the private containerd.
func (e *Parts) Ctr(ctx context.Context, namespace string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"-a", e.ContainerdSocket, "-n", namespace}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}
