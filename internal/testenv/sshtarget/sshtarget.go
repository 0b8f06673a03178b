// Package sshtarget boots real SSH deploy targets for tests: each target is a Debian bookworm
// root filesystem booted with systemd as PID 1 under `systemd-nspawn -b`, in its own network
// namespace reached over a veth from the host, with its own overlay root, its own /nix store with
// Debian's Nix 2.8, a real sshd and a real systemd-run. It needs root, Linux, and the base tarball
// `HEARTH_NEED_TARGETS=1 ./scripts/setup.sh` builds.
//
// Each target claims a /24 in 10.231.0.0/16 by creating the network namespace hearth-t<X>
// (creation fails if it exists, so fleets in one process and in parallel test processes do not
// collide): the host end of its veth is hth<X> with 10.231.X.1, the target's eth0 has 10.231.X.2.
// Its processes run in the cgroup hearth-t<X> of the name=systemd and unified hierarchies.
//
// The base is unpacked once per version of the tarball into BaseCache, which stays (it is a cache,
// like the tarball). Leftovers: Fleet.Stop removes everything a fleet made. A test process that dies without Stop
// sends SIGTERM to its nspawns (parent-death signal), so the targets power off, but it leaves the
// network namespaces hearth-t<X> (and with them the veths hth<X>), the cgroups
// /sys/fs/cgroup/{systemd,unified}/hearth-t<X> and the fleet's directory. Remove them with
// `ip netns del hearth-t<X>` and `rmdir` (deepest first). iproute2's /run/netns mount and the
// empty directory /run/systemd/nspawn stay on the host by design (both are shared, not per fleet).
package sshtarget

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// BaseTarball is the targets' base root filesystem, built by scripts/setup.sh.
const BaseTarball = "/var/cache/hearth/target-base-bookworm.tar.zst"

// ErrNoBase is returned (wrapped) by StartFleet when BaseTarball is missing.
var ErrNoBase = errors.New("the SSH targets' base system " + BaseTarball +
	" is missing: build it with `HEARTH_NEED_TARGETS=1 ./scripts/setup.sh` (as root)")

// Timeouts.
var (
	// BootTimeout bounds how long StartFleet and Reboot wait for a target to accept a login.
	BootTimeout = 90 * time.Second
	// StopTimeout is how long Stop waits for an orderly poweroff before SIGKILL.
	StopTimeout = 5 * time.Second
)

const (
	subnetPrefix = "10.231."
	nsPrefix     = "hearth-t"
	vethPrefix   = "hth"
)

//go:embed boot.sh
var bootScript []byte

// Available reports why targets cannot be started here, or nil if they can: it needs root, the
// base tarball, and systemd-nspawn, unshare and ip on PATH.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("SSH targets need root (network namespaces, mounts, systemd-nspawn)")
	}
	if _, err := os.Stat(BaseTarball); err != nil {
		return ErrNoBase
	}
	for _, c := range []string{"systemd-nspawn", "unshare", "ip", "tar", "zstd"} {
		if _, err := exec.LookPath(c); err != nil {
			return fmt.Errorf("SSH targets need %s: install it with `HEARTH_NEED_TARGETS=1 ./scripts/setup.sh`", c)
		}
	}
	return nil
}

// Fleet is a set of targets sharing one unpacked base and one client key.
type Fleet struct {
	// Dir holds everything the fleet made; Stop removes it.
	Dir string
	// Identity is the path of an ed25519 private key (OpenSSH format, mode 0600) authorized for
	// root and for the user "deploy" on every target.
	Identity string
	// PublicKey is its authorized_keys line.
	PublicKey string

	signer   ssh.Signer
	targets  []*Target
	stopOnce sync.Once
	stopErr  error
}

// Target is one booted host.
type Target struct {
	// Name is the target's name and hostname: t1, t2, …
	Name string
	// Addr is the target's address inside its network namespace, 10.231.X.2.
	Addr string
	// HostAddr is the host end of the veth, 10.231.X.1: a server the tests start on it is what the
	// target can reach (nothing else is).
	HostAddr string
	// Port is sshd's port, 22.
	Port int
	// HostKeyLine is the target's ed25519 host key as a known_hosts line "ADDR ssh-ed25519 AAAA…".
	HostKeyLine string
	// KnownHosts is the path of a known_hosts file holding exactly HostKeyLine.
	KnownHosts string
	// Netns is the target's network namespace (in /run/netns), Veth the host end of its veth.
	Netns, Veth string

	fleet  *Fleet
	x      int
	dir    string
	cgroup string
	hostCB ssh.HostKeyCallback

	mu       sync.Mutex
	proc     *os.Process
	stopping bool
	exited   chan struct{} // closed when the relaunch loop has ended
	exitErr  error
}

// StartFleet makes n targets under dir (created if needed; Stop removes it), boots them in
// parallel and returns when every one accepts an SSH login as root with the fleet's key. On error
// it has undone everything it made.
func StartFleet(dir string, n int) (f *Fleet, err error) {
	if n < 1 {
		return nil, errors.New("sshtarget: a fleet needs at least one target")
	}
	if err := Available(); err != nil {
		return nil, fmt.Errorf("sshtarget: %w", err)
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	f = &Fleet{Dir: dir}
	defer func() {
		if err != nil {
			f.Stop()
			f = nil
		}
	}()
	if err := f.makeKey(); err != nil {
		return f, err
	}
	base, err := unpackedBase()
	if err != nil {
		return f, err
	}
	uid, gid, err := lookupUser(filepath.Join(base, "etc/passwd"), "deploy")
	if err != nil {
		return f, fmt.Errorf("sshtarget: the base system has no user deploy (rebuild it: delete %s and run `HEARTH_NEED_TARGETS=1 ./scripts/setup.sh`): %v", BaseTarball, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), []byte(f.PublicKey+"\n"), 0o600); err != nil {
		return f, err
	}
	if err := os.WriteFile(filepath.Join(dir, "boot.sh"), bootScript, 0o755); err != nil {
		return f, err
	}
	for i := 1; i <= n; i++ {
		t, err := f.newTarget(fmt.Sprintf("t%d", i), base, uid, gid)
		if err != nil {
			return f, err
		}
		f.targets = append(f.targets, t)
		go t.run()
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, t := range f.targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = t.waitReady(time.Now().Add(BootTimeout), "")
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return f, err
	}
	return f, nil
}

// BaseCache holds the base tarball unpacked, once per version of the tarball, shared (read-only,
// as the overlays' lower directory) by every fleet of every process. Unpacking takes 1–10 s on
// this machine's disk, the overlay 3 ms.
const BaseCache = "/var/cache/hearth/target-base-bookworm.d"

// unpackedBase returns the directory of the unpacked BaseTarball, unpacking it if it is not there
// yet. A version of it no target uses any more is removed when another is unpacked.
func unpackedBase() (string, error) {
	fi, err := os.Stat(BaseTarball)
	if err != nil {
		return "", fmt.Errorf("sshtarget: %w", ErrNoBase)
	}
	dir := filepath.Join(BaseCache, fmt.Sprintf("%d-%d", fi.Size(), fi.ModTime().UnixNano()))
	if _, err := os.Stat(dir); err == nil {
		return dir, nil
	}
	if err := os.MkdirAll(BaseCache, 0o755); err != nil {
		return "", err
	}
	lock, err := os.OpenFile(filepath.Join(BaseCache, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", err
	}
	if _, err := os.Stat(dir); err == nil {
		return dir, nil // another process unpacked it meanwhile
	}
	// Under the lock nobody else unpacks: what is not dir, and in no mount, is left over.
	entries, _ := os.ReadDir(BaseCache)
	for _, e := range entries {
		if p := filepath.Join(BaseCache, e.Name()); e.IsDir() && !mentionedInMounts(p) {
			os.RemoveAll(p)
		}
	}
	tmp, err := os.MkdirTemp(BaseCache, "tmp-")
	if err != nil {
		return "", err
	}
	if out, err := exec.Command("tar", "--zstd", "--numeric-owner", "--xattrs", "--xattrs-include=*",
		"-xpf", BaseTarball, "-C", tmp).CombinedOutput(); err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("sshtarget: unpacking %s: %v: %s", BaseTarball, err, out)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, dir); err != nil {
		os.RemoveAll(tmp)
		return "", err
	}
	return dir, nil
}

// mentionedInMounts reports whether a mount in any process's mount namespace names path (an
// overlay's lowerdir= among them).
func mentionedInMounts(path string) bool {
	infos, _ := filepath.Glob("/proc/[0-9]*/mountinfo")
	for _, m := range infos {
		if data, err := os.ReadFile(m); err == nil && bytes.Contains(data, []byte(path)) {
			return true
		}
	}
	return false
}

func (f *Fleet) makeKey() error {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	block, err := ssh.MarshalPrivateKey(priv, "hearth-sshtarget")
	if err != nil {
		return err
	}
	f.Identity = filepath.Join(f.Dir, "id_ed25519")
	if err := os.WriteFile(f.Identity, pem.EncodeToMemory(block), 0o600); err != nil {
		return err
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return err
	}
	f.PublicKey = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub))) + " hearth-sshtarget"
	if err := os.WriteFile(f.Identity+".pub", []byte(f.PublicKey+"\n"), 0o644); err != nil {
		return err
	}
	f.signer, err = ssh.NewSignerFromKey(priv)
	return err
}

func lookupUser(passwd, name string) (uid, gid int, err error) {
	data, err := os.ReadFile(passwd)
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Split(line, ":")
		if len(fields) >= 4 && fields[0] == name {
			uid, err1 := strconv.Atoi(fields[2])
			gid, err2 := strconv.Atoi(fields[3])
			if err := errors.Join(err1, err2); err != nil {
				return 0, 0, err
			}
			return uid, gid, nil
		}
	}
	return 0, 0, fmt.Errorf("no %s in %s", name, passwd)
}

// newTarget claims a subnet and makes the target's network and directories.
func (f *Fleet) newTarget(name, base string, uid, gid int) (*Target, error) {
	x, err := claimSubnet()
	if err != nil {
		return nil, err
	}
	t := &Target{
		Name:     name,
		Addr:     fmt.Sprintf("%s%d.2", subnetPrefix, x),
		HostAddr: fmt.Sprintf("%s%d.1", subnetPrefix, x),
		Port:     22,
		Netns:    fmt.Sprintf("%s%d", nsPrefix, x),
		Veth:     fmt.Sprintf("%s%d", vethPrefix, x),
		fleet:    f,
		x:        x,
		dir:      filepath.Join(f.Dir, name),
		cgroup:   fmt.Sprintf("%s%d", nsPrefix, x),
		exited:   make(chan struct{}),
	}
	// If a step fails, cleanupHost undoes the ones before (the caller never sees this target).
	steps := [][]string{
		{"link", "add", t.Veth, "type", "veth", "peer", "name", "eth0", "netns", t.Netns},
		{"addr", "add", t.HostAddr + "/24", "dev", t.Veth},
		{"link", "set", t.Veth, "up"},
		{"-n", t.Netns, "link", "set", "lo", "up"},
		{"-n", t.Netns, "addr", "add", t.Addr + "/24", "dev", "eth0"},
		{"-n", t.Netns, "link", "set", "eth0", "up"},
		{"-n", t.Netns, "route", "add", "default", "via", t.HostAddr},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			t.cleanupHost()
			return nil, err
		}
	}
	// The host forwards nothing the target sends, even if something turns on forwarding globally
	// later: the target reaches the host's end of the veth and nothing else.
	if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+t.Veth+"/forwarding", []byte("0\n"), 0o644); err != nil {
		t.cleanupHost()
		return nil, fmt.Errorf("sshtarget: %v", err)
	}
	for _, d := range []string{"upper", "work", "root"} {
		if err := os.MkdirAll(filepath.Join(t.dir, d), 0o755); err != nil {
			t.cleanupHost()
			return nil, err
		}
	}
	machineID := make([]byte, 16)
	rand.Read(machineID)
	files := map[string]string{
		"machine-id": hex.EncodeToString(machineID) + "\n",
		"env": fmt.Sprintf("NAME=%s\nNETNS=%s\nCGROUP=%s\nBASE=%s\nDEPLOY_UID=%d\nDEPLOY_GID=%d\n",
			name, t.Netns, t.cgroup, base, uid, gid),
	}
	for file, content := range files {
		if err := os.WriteFile(filepath.Join(t.dir, file), []byte(content), 0o644); err != nil {
			t.cleanupHost()
			return nil, err
		}
	}
	t.KnownHosts = filepath.Join(t.dir, "known_hosts")
	return t, nil
}

// claimSubnet creates the network namespace hearth-t<X> for the first X that has none.
func claimSubnet() (int, error) {
	for x := 1; x <= 254; x++ {
		out, err := exec.Command("ip", "netns", "add", fmt.Sprintf("%s%d", nsPrefix, x)).CombinedOutput()
		if err == nil {
			return x, nil
		}
		if !strings.Contains(string(out), "exists") {
			return 0, fmt.Errorf("sshtarget: ip netns add %s%d: %v: %s", nsPrefix, x, err, bytes.TrimSpace(out))
		}
	}
	return 0, errors.New("sshtarget: every network namespace hearth-t1 … hearth-t254 exists: stop other fleets or remove leftovers (ip netns del)")
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("sshtarget: ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// Targets returns the fleet's targets, t1 first.
func (f *Fleet) Targets() []*Target { return f.targets }

// run boots the target and boots it again after each reboot from inside (nspawn's exit code 133),
// until Stop or another exit. Each boot is a fresh private mount namespace; the overlay's upper
// directory keeps the target's state between boots.
func (t *Target) run() {
	defer close(t.exited)
	// The parent-death signal belongs to the thread that started the process: keep that thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	logFile, err := os.OpenFile(t.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.exitErr = err
		return
	}
	defer logFile.Close()
	for {
		cmd := exec.Command("unshare", "--mount", "--propagation", "private",
			"/bin/sh", filepath.Join(t.fleet.Dir, "boot.sh"), t.dir)
		cmd.Stdout, cmd.Stderr = logFile, logFile
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGTERM}
		t.mu.Lock()
		if t.stopping {
			t.mu.Unlock()
			return
		}
		err := cmd.Start()
		if err == nil {
			t.proc = cmd.Process
		}
		t.mu.Unlock()
		if err != nil {
			t.exitErr = err
			return
		}
		err = cmd.Wait()
		t.mu.Lock()
		t.proc = nil
		stopping := t.stopping
		t.mu.Unlock()
		if stopping {
			return
		}
		var exit *exec.ExitError
		if errors.As(err, &exit) && exit.ExitCode() == 133 {
			fmt.Fprintf(logFile, "\n[sshtarget] %s rebooted; booting it again\n", t.Name)
			continue
		}
		if err == nil {
			err = errors.New("systemd-nspawn exited (the target powered off)")
		}
		t.exitErr = fmt.Errorf("%s: %v", t.Name, err)
		fmt.Fprintf(logFile, "\n[sshtarget] %v\n", t.exitErr)
		return
	}
}

// LogPath is the file the target's console (systemd-nspawn's output) goes to.
func (t *Target) LogPath() string { return filepath.Join(t.dir, "console.log") }

// Log returns the target's console output so far.
func (t *Target) Log() string {
	data, _ := os.ReadFile(t.LogPath())
	return string(data)
}

func (t *Target) hostKeyFile() string {
	return filepath.Join(t.dir, "upper/etc/ssh/ssh_host_ed25519_key.pub")
}

// waitReady waits until the target made its host key, then until it accepts a login checked
// against that key. If oldBootID is set, the login must also show another boot.
func (t *Target) waitReady(deadline time.Time, oldBootID string) error {
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-t.exited:
			return fmt.Errorf("sshtarget: %s stopped while booting: %v\n--- console:\n%s", t.Name, t.exitErr, tail(t.Log(), 40))
		default:
		}
		if t.hostCB == nil {
			if err := t.readHostKey(); err != nil {
				last = err
				time.Sleep(25 * time.Millisecond)
				continue
			}
		}
		out, err := t.run1("root", "cat /proc/sys/kernel/random/boot_id", nil, 2*time.Second)
		if err == nil && strings.TrimSpace(out) != oldBootID {
			return nil
		}
		if err == nil {
			err = errors.New("still the old boot")
		}
		last = err
		time.Sleep(25 * time.Millisecond)
	}
	return fmt.Errorf("sshtarget: %s accepted no login within %s: %v\n--- console:\n%s", t.Name, BootTimeout, last, tail(t.Log(), 40))
}

// readHostKey reads the key the target made on its first boot from the overlay's upper directory,
// on the host: what the test pins comes from the target's disk, not from the connection.
func (t *Target) readHostKey() error {
	data, err := os.ReadFile(t.hostKeyFile())
	if err != nil {
		return err
	}
	fields := strings.Fields(string(data))
	if len(fields) < 2 || fields[0] != ssh.KeyAlgoED25519 {
		return fmt.Errorf("not yet a host key in %s", t.hostKeyFile())
	}
	if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(fields[0] + " " + fields[1])); err != nil {
		return err
	}
	line := t.Addr + " " + fields[0] + " " + fields[1]
	if err := os.WriteFile(t.KnownHosts, []byte(line+"\n"), 0o644); err != nil {
		return err
	}
	cb, err := knownhosts.New(t.KnownHosts)
	if err != nil {
		return err
	}
	t.HostKeyLine, t.hostCB = line, cb
	return nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Dial opens an SSH connection to the target as user (root or deploy) with the fleet's key,
// checking the host key against KnownHosts.
func (t *Target) Dial(user string, timeout time.Duration) (*ssh.Client, error) {
	if t.hostCB == nil {
		return nil, fmt.Errorf("sshtarget: %s has not booted", t.Name)
	}
	return ssh.Dial("tcp", net.JoinHostPort(t.Addr, strconv.Itoa(t.Port)), &ssh.ClientConfig{
		User:              user,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(t.fleet.signer)},
		HostKeyCallback:   t.hostCB,
		HostKeyAlgorithms: []string{ssh.KeyAlgoED25519},
		Timeout:           timeout,
	})
}

// SSHOptions are the options of /usr/bin/ssh (and NIX_SSHOPTS) that log in to the target with
// the fleet's key and pin its host key: ssh $(SSHOptions) root@Addr CMD.
func (t *Target) SSHOptions() []string {
	return []string{"-i", t.fleet.Identity, "-o", "IdentitiesOnly=yes", "-o", "UserKnownHostsFile=" + t.KnownHosts,
		"-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
		"-o", "ConnectTimeout=10", "-p", strconv.Itoa(t.Port)}
}

// Run runs a shell command on the target as root over SSH and returns its standard output. The
// error has the exit status and the standard error.
func (t *Target) Run(cmd string) (string, error) {
	return t.run1("root", cmd, nil, 10*time.Second)
}

// RunAs is Run as another user (deploy).
func (t *Target) RunAs(user, cmd string) (string, error) {
	return t.run1(user, cmd, nil, 10*time.Second)
}

func (t *Target) run1(user, cmd string, stdin []byte, dialTimeout time.Duration) (string, error) {
	c, err := t.Dial(user, dialTimeout)
	if err != nil {
		return "", fmt.Errorf("sshtarget: ssh %s@%s (%s): %w", user, t.Addr, t.Name, err)
	}
	defer c.Close()
	s, err := c.NewSession()
	if err != nil {
		return "", fmt.Errorf("sshtarget: ssh %s@%s (%s): %w", user, t.Addr, t.Name, err)
	}
	defer s.Close()
	var stdout, stderr bytes.Buffer
	s.Stdout, s.Stderr = &stdout, &stderr
	if stdin != nil {
		s.Stdin = bytes.NewReader(stdin)
	}
	if err := s.Run(cmd); err != nil {
		return stdout.String(), fmt.Errorf("sshtarget: %s on %s: %w; stderr: %s", cmd, t.Name, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// WriteFile writes a file on the target as root (making its directory), atomically.
func (t *Target) WriteFile(path string, data []byte, mode os.FileMode) error {
	q := shellQuote(path)
	tmp := shellQuote(path + ".sshtarget-tmp")
	cmd := fmt.Sprintf("set -e; mkdir -p \"$(dirname %s)\"; cat >%s; chmod %o %s; mv -f %s %s",
		q, tmp, mode.Perm(), tmp, tmp, q)
	_, err := t.run1("root", cmd, data, 10*time.Second)
	return err
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// CutNetwork makes the target unreachable while it stays up: its end of the veth goes down, so
// packets from the host to it are dropped (a dial times out) and it reaches nothing. It is the
// target's end, not the host's, because with the host's end down the host forgets the route and
// would send the target's address to its default gateway.
func (t *Target) CutNetwork() error {
	return ip("-n", t.Netns, "link", "set", "eth0", "down")
}

// RestoreNetwork undoes CutNetwork.
func (t *Target) RestoreNetwork() error {
	if err := ip("-n", t.Netns, "link", "set", "eth0", "up"); err != nil {
		return err
	}
	// The default route went with the link.
	return ip("-n", t.Netns, "route", "replace", "default", "via", t.HostAddr)
}

// BootID returns the target's current boot id.
func (t *Target) BootID() (string, error) {
	out, err := t.Run("cat /proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(out), err
}

// Reboot runs `systemctl reboot` on the target and waits until it accepts a login again, from a
// new boot.
func (t *Target) Reboot() error {
	old, err := t.BootID()
	if err != nil {
		return err
	}
	// The connection may end before the command does.
	t.Run("systemctl reboot")
	return t.waitReady(time.Now().Add(BootTimeout), old)
}

// Stop powers the targets off (SIGTERM to systemd-nspawn, SIGKILL after StopTimeout), kills
// whatever is left in their cgroups, removes their network namespaces, veths and cgroups, and
// removes Dir. Mounts live in the targets' own mount namespaces and go with their processes. It
// is safe to call more than once, and after a StartFleet that failed midway.
func (f *Fleet) Stop() error {
	f.stopOnce.Do(func() {
		var wg sync.WaitGroup
		errs := make([]error, len(f.targets))
		for i, t := range f.targets {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = t.stop()
			}()
		}
		wg.Wait()
		if err := os.RemoveAll(f.Dir); err != nil {
			errs = append(errs, err)
		}
		f.stopErr = errors.Join(errs...)
	})
	return f.stopErr
}

func (t *Target) stop() error {
	t.mu.Lock()
	t.stopping = true
	if t.proc != nil {
		t.proc.Signal(syscall.SIGTERM)
	}
	t.mu.Unlock()
	select {
	case <-t.exited:
	case <-time.After(StopTimeout):
		fmt.Fprintf(os.Stderr, "sshtarget: %s did not power off within %s: killing it\n", t.Name, StopTimeout)
		// The target's processes first, so that nspawn reaps its container's init (killed together,
		// the init would be reparented to the host's PID 1 and linger as a zombie), then nspawn.
		nspawn := 0
		t.mu.Lock()
		if t.proc != nil {
			nspawn = t.proc.Pid
		}
		t.mu.Unlock()
		t.killCgroup(nspawn)
		select {
		case <-t.exited:
		case <-time.After(2 * time.Second):
			t.mu.Lock()
			if t.proc != nil {
				t.proc.Kill()
			}
			t.mu.Unlock()
			<-t.exited
		}
	}
	return t.cleanupHost()
}

func (t *Target) cgroupDirs() []string {
	var dirs []string
	entries, _ := os.ReadDir("/sys/fs/cgroup")
	for _, e := range entries {
		d := filepath.Join("/sys/fs/cgroup", e.Name(), t.cgroup)
		if _, err := os.Stat(d); err == nil {
			dirs = append(dirs, d)
		}
	}
	return dirs
}

// cgroupPids lists the processes left in the target's cgroups.
func (t *Target) cgroupPids() []int {
	var pids []int
	for _, d := range t.cgroupDirs() {
		filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
			if err != nil || e.Name() != "cgroup.procs" {
				return nil
			}
			data, _ := os.ReadFile(p)
			for _, f := range strings.Fields(string(data)) {
				if pid, err := strconv.Atoi(f); err == nil {
					pids = append(pids, pid)
				}
			}
			return nil
		})
	}
	return pids
}

// killCgroup sends SIGKILL to every process in the target's cgroups but except.
func (t *Target) killCgroup(except int) {
	for _, pid := range t.cgroupPids() {
		if pid != except {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// cleanupHost removes what the target left on the host: processes in its cgroups, the cgroups,
// the veth and the network namespace.
func (t *Target) cleanupHost() error {
	var errs []error
	deadline := time.Now().Add(5 * time.Second)
	for {
		pids := t.cgroupPids()
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			errs = append(errs, fmt.Errorf("sshtarget: %s: processes %v outlived SIGKILL", t.Name, pids))
			break
		}
		t.killCgroup(0)
		time.Sleep(20 * time.Millisecond)
	}
	for _, d := range t.cgroupDirs() {
		var sub []string
		filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				sub = append(sub, p)
			}
			return nil
		})
		for i := len(sub) - 1; i >= 0; i-- {
			if err := os.Remove(sub[i]); err != nil && !os.IsNotExist(err) {
				errs = append(errs, fmt.Errorf("sshtarget: %s: %v", t.Name, err))
			}
		}
	}
	// Deleting the host end deletes the pair at once; the namespace itself goes asynchronously.
	exec.Command("ip", "link", "del", t.Veth).Run()
	if _, err := os.Stat("/run/netns/" + t.Netns); err == nil {
		if err := ip("netns", "del", t.Netns); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
