package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Daemon is one nix-daemon on the host's store, with a log, a config and a post-build-hook queue
// of its own. Tests that look at what a daemon logged or queued start their own, so that what
// other tests built does not reach them.
type Daemon struct {
	NixSocket string
	// NixLog is the daemon's log: it names every client's uid and whether it is trusted.
	NixLog string
	// NixConfDir holds the daemon's nix.conf.
	NixConfDir string
	// StoreRoot is "/" for a daemon on the system store, else the root of the store of its own
	// (a tier's, from NewTierDaemon), which keeps its paths in StoreRoot/nix/store.
	StoreRoot string

	// HostAddr is, for an isolated daemon, the host's end of its veth: an address of the host's
	// own, which its builds must not reach.
	HostAddr string

	dir     string
	parts   *Parts
	netns   string
	veth    string
	rules   [][]string
	env     []string
	args    []string
	mounted bool
	mu      sync.Mutex
	cmd     *exec.Cmd
}

// NewDaemon starts another daemon on the same store, configured as the first one. Stop it when
// done with it: Parts.Stop stops only the first.
func (e *Parts) NewDaemon() (*Daemon, error) {
	e.daemons++
	return e.newDaemon(fmt.Sprintf("nix-%d", e.daemons))
}

// NewIsolatedDaemonWith is NewIsolatedDaemon with conf added to its nix.conf, whose later lines
// win over earlier ones: a host's daemon set up wrong ("sandbox = false", "post-build-hook =").
func (e *Parts) NewIsolatedDaemonWith(conf string) (*Daemon, error) {
	e.daemons++
	return e.startDaemon(fmt.Sprintf("nix-%d", e.daemons), "/", false, true, conf)
}

// NewTierDaemon starts a daemon on a store of its own, as the unprotected tier's: no
// post-build-hook (nothing it builds is queued for the cache), and the team cache among its
// substituters when substitute is set, as a tier substituting from the team cache read-only.
func (e *Parts) NewTierDaemon(substitute bool) (*Daemon, error) {
	return e.newTier(substitute, "", "", false)
}

// NewIsolatedTierDaemon is NewTierDaemon (without substituters) in a network namespace of its own,
// as NewIsolatedDaemon: a runner host's unprotected tier set up as the README says.
func (e *Parts) NewIsolatedTierDaemon() (*Daemon, error) {
	return e.newTier(false, "", "", true)
}

// NewSmallTierDaemon is NewTierDaemon (without substituters) on a store of size bytes (a tmpfs,
// "256m" say; "" for no bound of its own), with conf added to its nix.conf: a tier whose disk
// fills up.
func (e *Parts) NewSmallTierDaemon(size, conf string) (*Daemon, error) {
	return e.newTier(false, size, conf, false)
}

func (e *Parts) newTier(substitute bool, size, conf string, isolated bool) (*Daemon, error) {
	e.daemons++
	name := fmt.Sprintf("tier-%d", e.daemons)
	root := filepath.Join(e.Dir, name, "root")
	if size != "" {
		if err := os.MkdirAll(root, 0o755); err != nil {
			return nil, err
		}
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", root).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("mount a %s store for the tier: %v: %s", size, err, out)
		}
	}
	d, err := e.startDaemon(name, root, substitute, isolated, conf)
	if err != nil {
		if size != "" {
			exec.Command("umount", "-l", root).Run()
		}
		return nil, err
	}
	d.mounted = size != ""
	return d, nil
}

// NewIsolatedDaemon starts another daemon like NewDaemon, in a network namespace of its own with
// NAT, as a runner host should run it: its fixed-output builds reach the outside (Outside) but
// not the host's own addresses, its loopback services included. HostAddr is the host's end.
func (e *Parts) NewIsolatedDaemon() (*Daemon, error) {
	e.daemons++
	return e.startDaemon(fmt.Sprintf("nix-%d", e.daemons), "/", false, true, "")
}

func (e *Parts) newDaemon(name string) (*Daemon, error) {
	return e.startDaemon(name, "/", false, false, "")
}

func (e *Parts) startDaemon(name, storeRoot string, substitute, isolated bool, extraConf string) (d *Daemon, err error) {
	d = &Daemon{dir: filepath.Join(e.Dir, name), parts: e, StoreRoot: storeRoot}
	d.NixConfDir = filepath.Join(d.dir, "conf")
	if err := os.MkdirAll(d.NixConfDir, 0o755); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(d.dir, "daemon-socket"), 0o755); err != nil {
		return nil, err
	}
	d.NixSocket = filepath.Join(d.dir, "daemon-socket", "socket")
	d.NixLog = filepath.Join(d.dir, "nix-daemon.log")
	// No substituters by default: the machine is offline, and a build must not wait on DNS.
	conf := fmt.Sprintf("sandbox = true\nbuild-users-group = nixbld\ntrusted-substituters = file://%s\ntrusted-public-keys = %s\n", e.TeamCache, e.teamPublic)
	if substitute {
		conf += fmt.Sprintf("substituters = file://%s\n", e.TeamCache)
	} else {
		conf += "substituters =\n"
	}
	if storeRoot == "/" {
		// The daemon's post-build-hook queues what it builds, as on a runner host. Nix passes
		// the hook no arguments, hence the wrapper; the hook's config needs only the queue and
		// where to root what it queues.
		hookCfg := filepath.Join(d.dir, "hook.toml")
		if err := os.WriteFile(hookCfg, []byte(fmt.Sprintf("[nix]\ngc_roots_dir = %q\n[cache]\nqueue_dir = %q\n[environments.default]\nstore_path = \"/nix/store/00000000000000000000000000000000-unused\"\n", e.GCRoots, d.QueueDir())), 0o644); err != nil {
			return nil, err
		}
		hook := filepath.Join(d.dir, "post-build-hook")
		if err := os.WriteFile(hook, []byte(fmt.Sprintf("#!/bin/sh\nexec %s --config %s cache hook\n", e.Hearth, hookCfg)), 0o755); err != nil {
			return nil, err
		}
		conf += "post-build-hook = " + hook + "\n" + e.nixConf
	} else if err := os.MkdirAll(storeRoot, 0o755); err != nil {
		return nil, err
	}
	conf += extraConf
	if err := os.WriteFile(filepath.Join(d.NixConfDir, "nix.conf"), []byte(conf), 0o644); err != nil {
		return nil, err
	}
	// Not NixEnv, and the local store named: a daemon whose store is the daemon (NIX_REMOTE=daemon,
	// or "auto" on a machine where /nix/var/nix does not exist yet) serves every connection by
	// connecting to itself, without end.
	daemonEnv := append(os.Environ(), "NIX_REMOTE=local", "NIX_DAEMON_SOCKET_PATH="+d.NixSocket, "NIX_CONF_DIR="+d.NixConfDir)
	args := append(append([]string(nil), e.nixRoot...), "nix-daemon")
	if storeRoot != "/" {
		args = append(args, "--store", storeRoot)
	}
	if isolated {
		defer func() {
			if err != nil {
				d.unisolate()
			}
		}()
		if err := d.isolate(); err != nil {
			return nil, err
		}
		args = append([]string{"ip", "netns", "exec", d.netns}, args...)
	}
	d.env, d.args = daemonEnv, args
	cmd, err := start(d.NixLog, daemonEnv, args...)
	if err != nil {
		return nil, err
	}
	d.cmd = cmd
	if err := waitSocket(d.NixSocket, 20*time.Second); err != nil {
		d.Stop()
		return nil, err
	}
	// The daemon logs waitSocket's probe from a child process, a moment later: wait for the line,
	// so that a test reading the log from here on sees its own clients only.
	if err := waitLogged(d.NixLog, "accepted connection from pid", 10*time.Second); err != nil {
		d.Stop()
		return nil, err
	}
	return d, nil
}

func waitLogged(log, line string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if b, _ := os.ReadFile(log); strings.Contains(string(b), line) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not log %q within %s", log, line, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Stop ends the daemon; it may be called more than once. Parts.Stop stops the first.
func (d *Daemon) Stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd != nil {
		stop(d.cmd)
		d.cmd = nil
	}
	d.unisolate()
	if d.mounted {
		exec.Command("umount", "-l", d.StoreRoot).Run()
		d.mounted = false
	}
}

// Restart stops the daemon and starts it again on the same socket, as a host's daemon restarts:
// its clients lose their connections, and the socket is made anew.
func (d *Daemon) Restart() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd != nil {
		// All of it, as systemd restarts a unit: the daemon serves each client from a process
		// of its own, which would otherwise finish the build it runs.
		workers := childrenOf(d.cmd.Process.Pid)
		stop(d.cmd)
		for _, pid := range workers {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	os.Remove(d.NixSocket)
	cmd, err := start(d.NixLog+".restarted", d.env, d.args...)
	if err != nil {
		return err
	}
	d.cmd = cmd
	return waitSocket(d.NixSocket, 20*time.Second)
}

// isolate makes the daemon's network namespace hearth-d<X>: 10.251.X.2, NAT through the host's
// end 10.251.X.1, and nothing from it reaches the host itself.
func (d *Daemon) isolate() error {
	x, err := claimNetns("hearth-d")
	if err != nil {
		return err
	}
	d.netns, d.veth = fmt.Sprintf("hearth-d%d", x), fmt.Sprintf("hd%d", x)
	d.HostAddr = fmt.Sprintf("10.251.%d.1", x)
	addr, subnet := fmt.Sprintf("10.251.%d.2", x), fmt.Sprintf("10.251.%d.0/24", x)
	in := func(args ...string) []string { return append([]string{"netns", "exec", d.netns}, args...) }
	for _, args := range [][]string{
		{"link", "add", d.veth, "type", "veth", "peer", "name", "eth0", "netns", d.netns},
		{"addr", "add", d.HostAddr + "/24", "dev", d.veth},
		{"link", "set", d.veth, "up"},
		in("ip", "addr", "add", addr+"/24", "dev", "eth0"),
		in("ip", "link", "set", "eth0", "up"),
		in("ip", "link", "set", "lo", "up"),
		in("ip", "route", "add", "default", "via", d.HostAddr),
	} {
		if err := runIP(args...); err != nil {
			return err
		}
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644); err != nil {
		return err
	}
	d.rules = [][]string{
		{"-t", "nat", "-A", "POSTROUTING", "-s", subnet, "!", "-o", d.veth, "-j", "MASQUERADE"},
		{"-A", "INPUT", "-i", d.veth, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"},
		{"-A", "INPUT", "-i", d.veth, "-j", "DROP"},
	}
	for _, r := range d.rules {
		if out, err := exec.Command("iptables", r...).CombinedOutput(); err != nil {
			return fmt.Errorf("iptables %s: %v: %s", strings.Join(r, " "), err, out)
		}
	}
	return nil
}

func (d *Daemon) unisolate() {
	if d.netns == "" {
		return
	}
	for _, r := range d.rules {
		del := append([]string{}, r...)
		for i, a := range del {
			if a == "-A" {
				del[i] = "-D"
			}
		}
		exec.Command("iptables", del...).Run()
	}
	exec.Command("ip", "link", "del", d.veth).Run()
	exec.Command("ip", "netns", "del", d.netns).Run()
	d.netns = ""
}

// QueueDir is where the daemon's post-build-hook queues built paths.
func (d *Daemon) QueueDir() string { return filepath.Join(d.dir, "queue") }

// NixEnv is the environment that points Nix commands at the daemon and its config.
func (d *Daemon) NixEnv() []string {
	return append(os.Environ(), "NIX_REMOTE=daemon", "NIX_DAEMON_SOCKET_PATH="+d.NixSocket, "NIX_CONF_DIR="+d.NixConfDir)
}

// Nix runs a Nix command against the daemon and returns its stdout.
func (d *Daemon) Nix(args ...string) (string, error) {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = d.NixEnv()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return strings.TrimSpace(string(out)), nil
}

// childrenOf lists the processes whose parent is pid.
func childrenOf(pid int) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, ent := range entries {
		child, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "stat"))
		if err != nil {
			continue
		}
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, child)
		}
	}
	return out
}
