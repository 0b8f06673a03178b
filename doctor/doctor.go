// Package doctor checks a runner host as hearth will use it, one line per thing that can be
// wrong, probing where it can rather than reading files: it connects to containerd and to each
// tier's nix-daemon, builds a tiny derivation in each tier to see the sandbox and the
// post-build-hook at work, asks each daemon as a job's uid whether it trusts it, has a
// fixed-output build in each tier try the host's addresses, pushes the probe to the cache, scrapes
// the watcher's metrics, logs in to each deploy target, and puts a network namespace on the jobs'
// bridge to try the host's addresses from it.
package doctor

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hearth-ci/hearth/bytesize"
	"github.com/hearth-ci/hearth/cache"
	"github.com/hearth-ci/hearth/cache/open"
	"github.com/hearth-ci/hearth/config"
	"github.com/hearth-ci/hearth/deploy"
	"github.com/hearth-ci/hearth/executor"
	"github.com/hearth-ci/hearth/jobcontainer"
	"github.com/hearth-ci/hearth/metrics"
	"github.com/hearth-ci/hearth/nix"
	"github.com/hearth-ci/hearth/nix/daemon"
	"github.com/hearth-ci/hearth/nixstore"
)

// Result is one check: what was checked, whether it holds, what was found, and, when it does not
// hold, what to do.
type Result struct {
	Check  string `json:"check"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// Doctor checks the host for one config.
type Doctor struct {
	Config *config.Config
	// Exe is the hearth binary, run as a job's uid to ask the daemons whether they trust it, and
	// in a user namespace to see that one can be made.
	Exe string
	// Env is the environment of the nix commands the probes run (NIX_CONF_DIR, PATH).
	Env []string
	// NoPush keeps the doctor from pushing: it then only asks the cache what it holds (as it does
	// when the config never pushes). The post-build-hook still queues the probes, and a running
	// cache watch pushes them.
	NoPush bool
	// WatchWait is how long the doctor waits for `hearth cache watch` to push its probe (default
	// 10 s; the watcher looks at the queue every second).
	WatchWait time.Duration
	// Version is this hearth's, which the watcher serving the metrics should run too.
	Version string

	// The cache, opened once for the checks that ask it (see backend).
	opened     bool
	backendOf  cache.Backend
	backendErr error
	// builders are the probes' builder in each tier's store, by daemon socket (see builder).
	builders map[string]string
}

// nixEnv is the environment of nix commands that talk to t's daemon.
func (d *Doctor) nixEnv(t config.Tier) []string {
	return append(append([]string(nil), d.Env...), "NIX_REMOTE=daemon", "NIX_DAEMON_SOCKET_PATH="+t.DaemonSocket)
}

// nix runs a nix command against t's daemon and returns the last line it printed; its error says
// what the command printed on stderr.
func (d *Doctor) nix(ctx context.Context, t config.Tier, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = d.nixEnv(t)
	out, err := cmd.Output()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		err = fmt.Errorf("%s: %s", args[0], buildError(string(ee.Stderr)))
	}
	return lastLine(string(out)), err
}

// builder adds hearth itself, the probes' builder (static, so it needs nothing else in the store),
// to t's store, once a run for all the probes of the tier.
func (d *Doctor) builder(ctx context.Context, t config.Tier) (string, error) {
	if b, ok := d.builders[t.DaemonSocket]; ok {
		return b, nil
	}
	b, err := d.nix(ctx, t, "nix-store", "--add", d.Exe)
	if err != nil {
		return "", fmt.Errorf("adding the probe's builder to the store: %w", err)
	}
	if d.builders == nil {
		d.builders = map[string]string{}
	}
	d.builders[t.DaemonSocket] = b
	return b, nil
}

// backend opens the configured cache the first time a check asks for it, and hands the same
// connection (or the same error) to every later check.
func (d *Doctor) backend(ctx context.Context) (cache.Backend, error) {
	if !d.opened {
		d.opened = true
		d.backendOf, d.backendErr = open.Backend(ctx, d.Config)
	}
	return d.backendOf, d.backendErr
}

func ok(check, detail string) Result { return Result{Check: check, OK: true, Detail: detail} }
func bad(check, detail, fix string) Result {
	return Result{Check: check, Detail: detail, Fix: fix}
}

// Run runs every check, in the order a host is set up.
func (d *Doctor) Run(ctx context.Context) []Result {
	cfg := d.Config
	var rs []Result
	rs = append(rs, d.containerd(ctx), runc(ctx), d.userNamespaces(ctx), d.subordinateIDs(), d.stateDir())
	nonce := randomHex()
	// Where the fetch probes knock; without it (no port to listen on) each tier's fetchers line
	// says why.
	host, listenErr := listenOnHost()
	if listenErr == nil {
		defer host.Close()
	}
	var probe string // what the protected tier built, for the cache checks
	queued := false  // whether its post-build-hook queued it
	for _, t := range cfg.Nix.Tiers() {
		name := "nix-daemon"
		if len(cfg.Nix.Tiers()) > 1 {
			name = fmt.Sprintf("nix-daemon (%s tier)", t.Name)
		}
		info, err := daemon.Probe(ctx, t.DaemonSocket)
		if err != nil {
			rs = append(rs, bad(name, err.Error(), "start the nix-daemon, or point the config's daemon_socket at its socket"))
			continue
		}
		rs = append(rs, ok(name, fmt.Sprintf("Nix %s at %s (protocol %s)", orUnknown(info.Version), t.DaemonSocket, info.Protocol)))
		rs = append(rs, advisories(name, info.Version))
		rs = append(rs, d.trust(ctx, name, t))
		out, r := d.sandbox(ctx, name, t, nonce)
		rs = append(rs, r)
		rs = append(rs, d.fetchNetwork(ctx, name, t, nonce, host, listenErr))
		if out != "" {
			r, q := d.hook(ctx, name, t, out)
			rs = append(rs, r)
			if d.pushes(t) {
				probe, queued = out, q
			}
		}
	}
	rs = append(rs, d.queue(ctx, probe, queued)...)
	rs = append(rs, d.metrics(ctx))
	rs = append(rs, d.cache(ctx, probe)...)
	for _, name := range cfg.Deploy.TargetNames() {
		rs = append(rs, d.target(ctx, name))
	}
	rs = append(rs, d.network(ctx, nonce))
	return rs
}

func (d *Doctor) containerd(ctx context.Context) Result {
	e := executor.New(d.Config)
	defer e.Close()
	v, err := e.ContainerdVersion(ctx)
	if err != nil {
		return bad("containerd", err.Error(), "start containerd (systemctl start containerd), or fix [containerd] address")
	}
	return ok("containerd", fmt.Sprintf("%s at %s", v, d.Config.Containerd.Address))
}

func runc(ctx context.Context) Result {
	p, err := exec.LookPath("runc")
	if err != nil {
		return bad("runc", "runc is not on PATH", "install runc (Debian: apt-get install runc; hearth's NixOS module installs it)")
	}
	out, err := exec.CommandContext(ctx, p, "--version").Output()
	if err != nil {
		return bad("runc", fmt.Sprintf("%s --version: %v", p, err), "reinstall runc")
	}
	first, _, _ := strings.Cut(string(out), "\n")
	return ok("runc", fmt.Sprintf("%s (%s)", first, p))
}

// userNamespaces runs hearth in a user namespace mapped as a job's is.
func (d *Doctor) userNamespaces(ctx context.Context) Result {
	start := int(d.Config.Jobs.UIDMapStart)
	cmd := exec.CommandContext(ctx, d.Exe, "--version")
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: start, Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: start, Size: 1}},
	}
	out, err := cmd.CombinedOutput()
	if errors.Is(err, fs.ErrPermission) {
		return bad("user namespaces", fmt.Sprintf("uid %d cannot run %s to try", start, d.Exe), "run a hearth that every user may execute (not one under /root)")
	}
	if err != nil {
		max, _ := os.ReadFile("/proc/sys/user/max_user_namespaces")
		return bad("user namespaces", fmt.Sprintf("cannot make one: %v %s (user.max_user_namespaces = %s)", err, strings.TrimSpace(string(out)), strings.TrimSpace(string(max))),
			"allow them: sysctl user.max_user_namespaces=15000")
	}
	return ok("user namespaces", fmt.Sprintf("usable, mapping uid 0 to %d", start))
}

// subordinateIDs looks for the job range among the ranges /etc/subuid and /etc/subgid hand out:
// a user owning one could enter the jobs' uids.
func (d *Doctor) subordinateIDs() Result {
	start := uint64(d.Config.Jobs.UIDMapStart)
	end := start + uint64(d.Config.Jobs.UIDMapSize)
	var clashes []string
	for _, f := range []string{"/etc/subuid", "/etc/subgid"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			var user string
			var s, n uint64
			if _, err := fmt.Sscanf(strings.ReplaceAll(line, ":", " "), "%s %d %d", &user, &s, &n); err != nil {
				continue
			}
			if s < end && start < s+n {
				clashes = append(clashes, fmt.Sprintf("%s gives %s %d–%d", f, user, s, s+n-1))
			}
		}
	}
	check := "job uid range"
	if len(clashes) > 0 {
		return bad(check, fmt.Sprintf("%d–%d overlaps %s", start, end-1, strings.Join(clashes, "; ")),
			"move [jobs] uid_map_start (default 1073741824) or that user's range")
	}
	return ok(check, fmt.Sprintf("%d–%d, in no one's /etc/subuid or /etc/subgid range", start, end-1))
}

// stateDir checks that an agent socket under state_dir fits a unix socket's 107 bytes, for the
// longest job ids gitlab-runner's payloads make.
func (d *Doctor) stateDir() Result {
	sock := filepath.Join(d.Config.Jobs.StateDir, "jobs", strings.Repeat("x", 48), "agent", jobcontainer.AgentSocketName)
	if len(sock) > 107 {
		return bad("state dir", fmt.Sprintf("%s makes agent socket paths of %d bytes; a unix socket takes 107", d.Config.Jobs.StateDir, len(sock)), "choose a shorter [jobs] state_dir, such as /run/hearth")
	}
	return ok("state dir", fmt.Sprintf("%s (agent sockets up to %d bytes of 107)", d.Config.Jobs.StateDir, len(sock)))
}

func advisories(name, version string) Result {
	check := name + " advisories"
	if version == "" {
		return bad(check, "the daemon does not say its version (its protocol is older than 1.33: Nix before 2.4)", "update Nix")
	}
	if found := daemon.Vulnerable(version); len(found) > 0 {
		return bad(check, fmt.Sprintf("Nix %s predates the fix of %s", version, daemon.Describe(found)), "update Nix on this host")
	}
	return ok(check, fmt.Sprintf("Nix %s has the fixes of every store-integrity advisory hearth knows", version))
}

// trust asks the daemon, as the uid jobs' root is on the host, whether it trusts it.
func (d *Doctor) trust(ctx context.Context, name string, t config.Tier) Result {
	uid := d.Config.Jobs.UIDMapStart
	check := name + " trust"
	cmd := exec.CommandContext(ctx, d.Exe, "doctor", "trust-probe", t.DaemonSocket)
	// As a job's processes are: that uid and gid, no supplementary groups.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid, Groups: []uint32{}}}
	out, err := cmd.Output()
	answer := strings.TrimSpace(string(out))
	switch {
	case errors.Is(err, fs.ErrPermission):
		return bad(check, fmt.Sprintf("uid %d cannot run %s to ask", uid, d.Exe), "run a hearth that every user may execute (not one under /root)")
	case err != nil:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			answer = strings.TrimSpace(string(ee.Stderr))
		}
		return bad(check, fmt.Sprintf("could not ask as uid %d: %v %s", uid, err, answer), "check that the daemon's socket is reachable by jobs (mode 0666)")
	case answer == "trusted":
		return bad(check, fmt.Sprintf("the daemon trusts uid %d, which is a job's root", uid),
			"take that uid, its group or * out of the daemon's trusted-users (leave it at root)")
	case answer == "untrusted":
		return ok(check, fmt.Sprintf("a job's uid (%d) is not a trusted user", uid))
	}
	return bad(check, fmt.Sprintf("unexpected answer %q", answer), "run hearth doctor again")
}

// sandbox builds a derivation that records its own pid: in the sandbox's pid namespace it is 1.
// It returns the probe's output path.
func (d *Doctor) sandbox(ctx context.Context, name string, t config.Tier, nonce string) (string, Result) {
	check := name + " sandbox"
	builder, err := d.builder(ctx, t)
	if err != nil {
		return "", bad(check, err.Error(), "check that the daemon answers and its store has room")
	}
	expr := fmt.Sprintf(`derivation { name = "hearth-doctor-%s-%s"; system = builtins.currentSystem; builder = builtins.storePath %q; args = [ "doctor" "sandbox-probe" ]; }`, t.Name, nonce, builder)
	path, err := d.nix(ctx, t, "nix-build", "--no-out-link", "-E", expr)
	if err != nil {
		return "", bad(check, "a probe build failed: "+err.Error(), "see the daemon's log")
	}
	pid, err := os.ReadFile(t.HostPath(path))
	if err != nil {
		return "", bad(check, fmt.Sprintf("the probe %s is not in the tier's store: %v", path, err), "point the tier's store_root at the daemon's store")
	}
	if strings.TrimSpace(string(pid)) != "1" {
		return path, bad(check, "builds run outside the sandbox (the probe build was not alone in its pid namespace)", "set sandbox = true in the daemon's nix.conf, and sandbox-fallback = false")
	}
	return path, ok(check, "builds run in the sandbox")
}

// FetchProbeOutput is what the fetch probe's builder writes: its hash is fixed in the derivation,
// as a fetcher's is.
const FetchProbeOutput = "hearth doctor fetch probe\n"

// The fetch probe's build log: a line for each address it reached, and one that says how many it
// tried, without which a log that did not reach the doctor (an output that was already valid, a
// build run elsewhere) would read as "none reached".
const (
	fetchReached = "hearth-doctor-fetch reached "
	fetchTried   = "hearth-doctor-fetch tried "
)

// FetchProbe tries each address at once, for a second (they are the host's own: an answer comes
// in microseconds, and a filter refuses the attempt or drops it), and returns a line for each it
// reached, then the line saying how many it tried. It runs as the builder of a fixed-output
// derivation, in whatever network the daemon gives it.
func FetchProbe(addrs []string) []string {
	reached := make([]bool, len(addrs))
	var wg sync.WaitGroup
	for i, a := range addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if c, err := net.DialTimeout("tcp", a, time.Second); err == nil {
				c.Close()
				reached[i] = true
			}
		}()
	}
	wg.Wait()
	var lines []string
	for i, a := range addrs {
		if reached[i] {
			lines = append(lines, fetchReached+a)
		}
	}
	return append(lines, fetchTried+strconv.Itoa(len(addrs)))
}

// fetchNetwork builds a fixed-output derivation, which Nix builds in the daemon's network even in
// the sandbox, whose builder tries the host's addresses where the doctor listens: a fetcher a job
// asks for must reach none of the host's services, whatever the job's own network.
func (d *Doctor) fetchNetwork(ctx context.Context, name string, t config.Tier, nonce string, host *hostListener, listenErr error) Result {
	check := name + " fetchers"
	if listenErr != nil {
		return bad(check, "the doctor could not listen for the probe: "+listenErr.Error(), "run hearth doctor as root")
	}
	builder, err := d.builder(ctx, t)
	if err != nil {
		return bad(check, err.Error(), "check that the daemon answers and its store has room")
	}
	addrs := append(append([]string(nil), host.addrs...), host.addrs6...)
	quoted := make([]string, len(addrs))
	for i, a := range addrs {
		quoted[i] = nixString(a)
	}
	sum := sha256.Sum256([]byte(FetchProbeOutput))
	expr := fmt.Sprintf(`derivation { name = "hearth-doctor-fetch-%s-%s"; system = builtins.currentSystem; builder = builtins.storePath %s; args = [ "doctor" "fetch-probe" %s ]; outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = "%x"; }`,
		t.Name, nonce, nixString(builder), strings.Join(quoted, " "), sum)
	// Built here, by this daemon, and not by a remote builder with a network of its own.
	build := exec.CommandContext(ctx, "nix-build", "--no-out-link", "--option", "builders", "", "-E", expr)
	build.Env = d.nixEnv(t)
	var log strings.Builder
	build.Stdout, build.Stderr = io.Discard, &log
	if err := build.Run(); err != nil {
		return bad(check, "the fixed-output probe failed: "+buildError(log.String()), "see the daemon's log")
	}
	var reached []string
	tried := ""
	for _, l := range strings.Split(log.String(), "\n") {
		if _, a, ok := strings.Cut(l, fetchReached); ok {
			reached = append(reached, strings.TrimSpace(a))
		}
		if _, n, ok := strings.Cut(l, fetchTried); ok {
			tried = strings.TrimSpace(n)
		}
	}
	switch {
	case tried != strconv.Itoa(len(addrs)):
		return bad(check, "the fixed-output probe's log did not come back (is the build log off, or was the build run elsewhere?)", "run hearth doctor again; see the daemon's log")
	case slices.ContainsFunc(reached, func(a string) bool { return strings.HasPrefix(a, "127.") || strings.HasPrefix(a, "[::1]") }):
		return bad(check, "a fixed-output build (a fetcher, which has the daemon's network whatever the job's) reached the host at "+strings.Join(reached, ", "),
			"the daemon's unit has neither an address filter nor a network namespace of its own: give it IPAddressDeny for localhost, link-local and the host's addresses (services.hearth does), or run it in a network namespace with NAT")
	case len(reached) > 0:
		return bad(check, "a fixed-output build (a fetcher, which has the daemon's network whatever the job's) reached the host at "+strings.Join(reached, ", "),
			"deny the host's own addresses to the daemon's unit too: services.hearth.daemonNetwork.extraDeniedAddresses (IPAddressDeny)")
	}
	return ok(check, fmt.Sprintf("a fixed-output build reaches none of the host's %d addresses", len(addrs)))
}

// nixString writes s as a Nix string literal.
func nixString(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "${", `\${`, "\n", `\n`)
	return `"` + r.Replace(s) + `"`
}

// hostListener accepts connections on every address of the host, for probes that must reach none
// of them. addrs are its loopback address and the host's other IPv4 addresses, each with its port;
// addrs6 the IPv6 ones (loopback and global), which only the fetch probe tries.
type hostListener struct {
	l             net.Listener
	addrs, addrs6 []string
}

func listenOnHost() (*hostListener, error) {
	l, err := net.Listen("tcp", ":0")
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	port := fmt.Sprint(l.Addr().(*net.TCPAddr).Port)
	h := &hostListener{l: l, addrs: []string{net.JoinHostPort("127.0.0.1", port)}, addrs6: []string{net.JoinHostPort("::1", port)}}
	ifaces, _ := net.InterfaceAddrs()
	for _, a := range ifaces {
		ip, ok := a.(*net.IPNet)
		switch {
		case !ok || ip.IP.IsLoopback():
		case ip.IP.To4() != nil:
			h.addrs = append(h.addrs, net.JoinHostPort(ip.IP.String(), port))
		case ip.IP.IsGlobalUnicast():
			h.addrs6 = append(h.addrs6, net.JoinHostPort(ip.IP.String(), port))
		}
	}
	return h, nil
}

func (h *hostListener) Close() { h.l.Close() }

// hook looks in the queue for the probe: the protected tier's post-build-hook must have queued it,
// the unprotected tier's daemon must have no hook that queues for the cache. A watcher may have
// pushed the entry already: a probe in the cache was queued too, since nothing else pushes it.
// It returns whether the probe was queued.
func (d *Doctor) hook(ctx context.Context, name string, t config.Tier, probe string) (Result, bool) {
	check := name + " post-build-hook"
	q := open.Queue(d.Config)
	queued, err := d.isQueued(probe)
	if err != nil {
		return bad(check, err.Error(), "check [cache] queue_dir"), false
	}
	pushed := false
	if !queued && d.pushes(t) {
		pushed = d.inCache(ctx, probe)
	}
	switch {
	case d.pushes(t) && queued:
		return ok(check, "queues what the daemon builds into "+q.Dir), true
	case d.pushes(t) && pushed:
		return ok(check, "queued the probe, and cache watch has pushed it already"), true
	case d.pushes(t):
		return bad(check, fmt.Sprintf("the daemon built %s and nothing was queued in %s", probe, q.Dir),
			"set the daemon's post-build-hook to a script running `hearth cache hook` with this config (see the README)"), false
	case queued:
		return bad(check, fmt.Sprintf("the unprotected tier's daemon queued %s for the cache", probe),
			"remove post-build-hook from the unprotected tier's nix.conf: nothing it builds may reach the cache"), false
	}
	return ok(check, "none: nothing the tier builds is queued for the cache"), false
}

// isQueued says whether an entry waiting in the queue names the probe: by its output, or by its
// derivation (Nix 2.8 gives the hook the derivation only).
func (d *Doctor) isQueued(probe string) (bool, error) {
	entries, err := open.Queue(d.Config).Pending()
	if err != nil {
		return false, err
	}
	drv := "-" + probeName(probe) + ".drv"
	for _, e := range entries {
		if slices.Contains(e.Outputs, probe) || strings.HasSuffix(e.Drv, drv) {
			return true, nil
		}
	}
	return false, nil
}

// inCache says whether the cache holds path.
func (d *Doctor) inCache(ctx context.Context, path string) bool {
	b, err := d.backend(ctx)
	if err != nil {
		return false
	}
	infos, err := nixstore.Daemon(d.Config.Nix.Trusted().DaemonSocket).Info(ctx, []string{path})
	if err != nil || len(infos) != 1 {
		return false
	}
	missing, err := b.Missing(ctx, infos)
	return err == nil && len(missing) == 0
}

// pushes says whether t is the tier whose builds are queued for the cache: the protected one, or
// the one shared tier.
func (d *Doctor) pushes(t config.Tier) bool {
	return t.DaemonSocket == d.Config.Nix.Trusted().DaemonSocket
}

// probeName is a store path's name without its hash: the derivation's name part.
func probeName(p string) string {
	base := filepath.Base(p)
	if i := strings.IndexByte(base, '-'); i >= 0 {
		return base[i+1:]
	}
	return base
}

// queue checks that the queue is writable and moving: the probe the hook queued leaves it within
// WatchWait when `hearth cache watch` runs; and that no path is rejected.
func (d *Doctor) queue(ctx context.Context, probe string, queued bool) []Result {
	q := open.Queue(d.Config)
	var rs []Result
	if _, err := os.Stat(q.Dir); errors.Is(err, fs.ErrNotExist) {
		rs = append(rs, ok("queue", q.Dir+" does not exist yet: the post-build-hook makes it"))
	} else if f, err := os.CreateTemp(q.Dir, ".doctor-"); err != nil {
		rs = append(rs, bad("queue", err.Error(), "make [cache] queue_dir writable by root (the nix-daemon's hook writes there)"))
	} else {
		f.Close()
		os.Remove(f.Name())
		rs = append(rs, ok("queue", q.Dir+" is writable"))
	}
	rs = append(rs, d.watch(ctx, probe, queued))
	rejected, err := q.Rejected()
	switch {
	case err != nil:
		rs = append(rs, bad("rejected paths", err.Error(), "check [cache] queue_dir"))
	case len(rejected) > 0:
		rs = append(rs, bad("rejected paths", fmt.Sprintf("%s refused for the cache (a NAR differs from the store's record)", entriesOf(len(rejected))),
			"see `hearth cache rejected`; repair each path (nix-store --repair-path) and release it with `hearth cache rejected --requeue PATH`"))
	default:
		rs = append(rs, ok("rejected paths", "none"))
	}
	return rs
}

func (d *Doctor) watch(ctx context.Context, probe string, queued bool) Result {
	const check = "cache watch"
	const fix = "start `hearth cache watch` (hearth-cache-watch.service), and see its log for push errors"
	entries, err := open.Queue(d.Config).Pending()
	if err != nil {
		return bad(check, err.Error(), "check [cache] queue_dir")
	}
	if len(entries) > 0 && time.Since(entries[0].Since) > 10*time.Minute {
		return bad(check, fmt.Sprintf("%s queued, the oldest for %s", entriesOf(len(entries)), time.Since(entries[0].Since).Round(time.Second)), fix)
	}
	if !queued {
		return ok(check, fmt.Sprintf("%s queued, none for more than 10 minutes (no probe to follow)", entriesOf(len(entries))))
	}
	wait := d.WatchWait
	if wait == 0 {
		wait = 10 * time.Second
	}
	start := time.Now()
	for {
		still, err := d.isQueued(probe)
		if err != nil {
			return bad(check, err.Error(), "check [cache] queue_dir")
		}
		if !still {
			return ok(check, fmt.Sprintf("pushed the probe %s after it was queued", time.Since(start).Round(100*time.Millisecond)))
		}
		if time.Since(start) > wait {
			return bad(check, fmt.Sprintf("the probe is still queued after %s", wait), fix)
		}
		select {
		case <-ctx.Done():
			return bad(check, ctx.Err().Error(), fix)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// buildInfo finds the version the metrics' hearth_build_info names.
var buildInfo = regexp.MustCompile(`(?m)^hearth_build_info\{version="([^"]*)"\} 1$`)

// metrics scrapes the watcher's listener, as Prometheus would, and compares the hearth it runs
// with this one: after an upgrade, a watcher not restarted still runs the old one.
func (d *Doctor) metrics(ctx context.Context) Result {
	const check = "metrics"
	listen := d.Config.Metrics.Listen
	if listen == "" {
		return ok(check, "off ([metrics] listen is empty): driver stages record nothing")
	}
	url := "http://" + listen + "/metrics"
	fix := "start `hearth cache watch` (hearth-cache-watch.service), which serves them on [metrics] listen, and see its log"
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return bad(check, err.Error(), "check [metrics] listen")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		detail := fmt.Sprintf("nothing serves %s: %v", url, err)
		if fi, serr := os.Stat(metrics.SpoolPath(d.Config)); serr == nil && fi.Size() > metrics.MaxSpool*9/10 {
			detail += fmt.Sprintf("; the stages' spool holds %s, and new events are dropped", bytesize.Format(fi.Size()))
		}
		return bad(check, detail, fix)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		return bad(check, fmt.Sprintf("%s answered %s (%v)", url, resp.Status, err), fix)
	}
	m := buildInfo.FindSubmatch(body)
	if m == nil {
		return bad(check, url+" serves no hearth_build_info: is that port hearth's?", "give [metrics] listen a port nothing else uses")
	}
	if v := string(m[1]); d.Version != "" && v != d.Version {
		return bad(check, fmt.Sprintf("%s is served by hearth %s, and this is hearth %s", url, v, d.Version), "restart hearth-cache-watch.service, which still runs the hearth from before the upgrade")
	}
	return ok(check, fmt.Sprintf("served on %s by hearth %s", url, m[1]))
}

// cache opens the cache, pushes the probe to it (which shows hearth may write there), and checks
// that the key it signs with is one this host's Nix trusts.
func (d *Doctor) cache(ctx context.Context, probe string) []Result {
	b, err := d.backend(ctx)
	if err != nil {
		return []Result{bad("cache", err.Error(), "fix [cache]: the backend's settings and the files they name")}
	}
	var rs []Result
	switch {
	case probe == "" || d.NoPush || d.Config.Cache.Push == "never":
		// Reading only: ask the cache about a path it does not hold.
		why := "no probe to push"
		if probe != "" {
			why = `--no-push, or [cache] push = "never"`
		}
		absent := nixstore.PathInfo{Path: nix.StoreDir + "/00000000000000000000000000000000-hearth-doctor-absent"}
		if _, err := b.Missing(ctx, []nixstore.PathInfo{absent}); err != nil {
			rs = append(rs, bad("cache", fmt.Sprintf("asking %s what it holds: %v", b, err), "check the cache's address and credentials"))
		} else {
			rs = append(rs, ok("cache", fmt.Sprintf("%s answers (not written: %s)", b, why)))
		}
	default:
		sum, err := open.Pusher(d.Config, b).Push(ctx, []string{probe}, cache.PathsOnly)
		switch {
		case err != nil:
			rs = append(rs, bad("cache", fmt.Sprintf("pushing a probe to %s: %v", b, err), "check the cache's address, credentials and permissions"))
		case sum.Pushed == 1:
			rs = append(rs, ok("cache", fmt.Sprintf("%s took a probe path", b)))
		default:
			rs = append(rs, ok("cache", fmt.Sprintf("%s holds the probe path (cache watch pushed it)", b)))
		}
	}
	key, err := open.SigningKey(d.Config)
	switch {
	case err != nil:
		rs = append(rs, bad("cache key", err.Error(), "fix the signing_key_file of [cache]"))
	case key == nil && d.Config.Cache.Backend == "attic":
		rs = append(rs, ok("cache key", "the Attic server signs what it serves"))
	case key == nil:
		rs = append(rs, bad("cache key", "narinfos are pushed unsigned", "make a key with `hearth cache keygen NAME` and set signing_key_file"))
	default:
		pub := key.Public().String()
		trustedKeys, err := d.trustedKeys(ctx)
		if err != nil {
			rs = append(rs, bad("cache key", err.Error(), "check this host's nix.conf"))
		} else if !slices.Contains(trustedKeys, pub) {
			rs = append(rs, bad("cache key", fmt.Sprintf("the cache is signed with %s, which this host's Nix does not trust", key.Public().Name),
				fmt.Sprintf("add %s to trusted-public-keys (here and on every host that substitutes from the cache), or fix signing_key_file", pub)))
		} else {
			rs = append(rs, ok("cache key", fmt.Sprintf("signs with %s, which this host's Nix trusts", key.Public().Name)))
		}
	}
	return rs
}

// trustedKeys are trusted-public-keys as Nix on this host reads its nix.conf.
func (d *Doctor) trustedKeys(ctx context.Context) ([]string, error) {
	show := exec.CommandContext(ctx, "nix", "--extra-experimental-features", "nix-command", "show-config")
	show.Env = d.Env
	out, err := show.Output()
	if err != nil {
		return nil, fmt.Errorf("nix show-config: %v", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if v, found := strings.CutPrefix(line, "trusted-public-keys = "); found {
			return strings.Fields(v), nil
		}
	}
	return nil, nil
}

func (d *Doctor) target(ctx context.Context, name string) Result {
	check := "deploy target " + name
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	what, err := deploy.New(d.Config).Reach(ctx, name)
	if err != nil {
		return bad(check, err.Error(), "check the target's host, port, user, known_hosts_file (its pinned host key) and identity_file")
	}
	return ok(check, what)
}

// network checks what a job's network lets it reach: on the bridge, a namespace made as a job's is
// tries the host's own addresses, where a listener of the doctor's waits.
func (d *Doctor) network(ctx context.Context, nonce string) Result {
	const check = "job network"
	switch d.Config.Jobs.Network {
	case "none":
		return ok(check, `"none": jobs have a loopback of their own and nothing else`)
	case "host":
		return bad(check, `"host": jobs share the host's network, and reach every service on its loopback and every other job's`, `set [jobs] network = "bridge"`)
	}
	host, err := listenOnHost()
	if err != nil {
		return bad(check, err.Error(), "run hearth doctor as root")
	}
	defer host.Close()
	addrs := host.addrs
	e := executor.New(d.Config)
	defer e.Close()
	reached, err := e.ProbeBridge(ctx, "hearth-doctor-"+nonce, addrs)
	if err != nil {
		return bad(check, "putting a probe on the bridge: "+err.Error(), "see the README's Networks section: the CNI plugins and iptables are needed")
	}
	if len(reached) > 0 {
		return bad(check, "a job on the bridge reached the host at "+strings.Join(reached, ", "), "check the host's firewall: hearth's HEARTH-IN-"+d.Config.Jobs.Bridge.Name+" chain must come first in INPUT")
	}
	return ok(check, fmt.Sprintf("a job on the bridge %s reaches none of the host's %d addresses", d.Config.Jobs.Bridge.Name, len(addrs)))
}

// entriesOf counts queue entries (each a build's outputs) for people.
func entriesOf(n int) string {
	if n == 1 {
		return "1 build"
	}
	return fmt.Sprintf("%d builds", n)
}

func orUnknown(v string) string {
	if v == "" {
		return "(version not said)"
	}
	return v
}

// buildError is what a failed nix command said that matters: its error lines and the builder's last
// log lines, not the hint on where the full log is.
func buildError(stderr string) string {
	var keep []string
	for _, l := range strings.Split(stderr, "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "error:") || strings.HasPrefix(l, "> ") {
			keep = append(keep, l)
		}
	}
	if len(keep) == 0 {
		return lastLine(stderr)
	}
	return strings.Join(keep, " / ")
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

func randomHex() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}
