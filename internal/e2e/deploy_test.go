package e2e

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hearth-ci/hearth/internal/testenv"
	"github.com/hearth-ci/hearth/internal/testenv/sshtarget"
	"github.com/hearth-ci/hearth/runner"
)

// The deploy tests run jobs that build a stand-in NixOS system and deploy it to real hosts: Debian
// with systemd as PID 1 under systemd-nspawn, each in its own network namespace with its own Nix
// store and sshd. The system's switch-to-configuration records each activation on the target and
// does what its mode says.

// fleet is a test's targets, the cache they pull from and a config naming them.
type fleet struct {
	*sshtarget.Fleet
	cache   *testenv.DeployCache
	gcRoots string
}

func (f *fleet) requested(suffix string) int {
	n := 0
	for _, r := range f.cache.Requests() {
		if strings.HasSuffix(r, suffix) {
			n++
		}
	}
	return n
}

// startFleet boots n targets, and serves a signed file cache to each on its veth address.
func startFleet(t *testing.T, n int) *fleet {
	t.Helper()
	if err := sshtarget.Available(); err != nil {
		if os.Getenv("HEARTH_CI") != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	sf, err := sshtarget.StartFleet(filepath.Join(parts.Dir, fmt.Sprintf("fleet-%d", time.Now().UnixNano())), n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sf.Stop() })
	f := &fleet{Fleet: sf, gcRoots: fmt.Sprintf("/nix/var/nix/gcroots/hearth-test-%d", time.Now().UnixNano())}
	t.Cleanup(func() { os.RemoveAll(f.gcRoots) })
	if f.cache, err = testenv.ServeCache(sf, t.TempDir()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.cache.Close)
	return f
}

// config is a hearth config whose cache is the fleet's and whose targets are the fleet's, each
// with extra lines from target (by name) and [deploy] lines from deploy.
func (f *fleet) config(t *testing.T, cache, deploy string, target func(name string) string) string {
	t.Helper()
	// Short timeouts, unless the test sets its own.
	for _, d := range []string{`confirm_timeout = "5s"`, `activation_timeout = "20s"`} {
		if key, _, _ := strings.Cut(d, " "); !strings.Contains(deploy, key+" =") {
			deploy += "\n" + d
		}
	}
	tables := fmt.Sprintf("\n[deploy]\ngc_roots_dir = %q\n%s\n", f.gcRoots, deploy) + f.cache.Tables(f.Fleet, `["7"]`, target)
	return writeCacheConfig(t, "", cache, tables)
}

// deployJobSrc is a job that builds a system per target (name → mode) and links each for deploy.
func deployJobSrc(nonce string, systems map[string]string, extra string) string {
	var b strings.Builder
	b.WriteString("deploy:\n  script:\n    - mkdir -p .hearth/deploy\n")
	for _, name := range slices.Sorted(maps.Keys(systems)) {
		fmt.Fprintf(&b, "    - |\n      cat > %s.nix <<'EOF'\n%s      EOF\n    - nix-build -o .hearth/deploy/%s %s.nix\n", name, indent(strings.TrimRight(parts.SystemExpr(nonce+"-"+name, systems[name]), "\n"), "      ")+"\n", name, name)
	}
	b.WriteString(extra)
	return b.String()
}

// protectedJob runs src as a job on the protected ref main of project 7.
func protectedJob(t *testing.T, cfg, src string, protected bool) (runner.Result, string) {
	t.Helper()
	var log syncBuffer
	opts := jobOptions(t, cfg, src, "deploy", &log)
	opts.Protected = protected
	res := runner.New(opts).Run(context.Background())
	return res, log.String()
}

// hostSystem builds a stand-in system on the host, as root through the test's daemon.
func hostSystem(t *testing.T, nonce, mode string) string {
	t.Helper()
	sys, err := daemonOf(t).BuildSystem(nonce, mode)
	if err != nil {
		t.Fatal(err)
	}
	return sys
}

// hearthDeploy runs the hearth deploy command.
func hearthDeploy(t *testing.T, cfg string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(parts.Hearth, append([]string{"--config", cfg, "deploy"}, args...)...)
	cmd.Env = append(os.Environ(), daemonOf(t).NixEnv()...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// base deploys a first system to every target with hearth deploy, so that each has a previous
// generation to go back to, and returns it.
func (f *fleet) base(t *testing.T, cfg string) string {
	t.Helper()
	sys := hostSystem(t, fmt.Sprint("base-", time.Now().UnixNano()), "ok")
	var args []string
	for _, tg := range f.Targets() {
		args = append(args, tg.Name+"="+sys)
	}
	if out, err := hearthDeploy(t, cfg, args...); err != nil {
		t.Fatalf("deploy the base system: %v\n%s", err, out)
	}
	return sys
}

// state is what a target runs and boots.
type state struct{ current, profile, generation string }

func stateOf(t *testing.T, tg *sshtarget.Target) state {
	t.Helper()
	out, err := tg.Run("readlink -e /run/current-system || echo; readlink -e /nix/var/nix/profiles/system || echo; readlink /nix/var/nix/profiles/system || echo")
	if err != nil {
		t.Fatalf("%s: %v", tg.Name, err)
	}
	l := strings.Split(strings.TrimRight(out, "\n")+"\n\n\n", "\n")
	return state{l[0], l[1], l[2]}
}

func activations(t *testing.T, tg *sshtarget.Target) string {
	t.Helper()
	out, _ := tg.Run("cat /var/log/hearth-test-activations 2>/dev/null || true")
	return out
}

var linkRE = regexp.MustCompile(`/nix/store/[0-9a-z]{32}-nixos-system-[0-9a-z-]+`)

// systemIn is the system of target name that a job log shows was built.
func systemIn(log, nonce, name string) string {
	for _, loc := range linkRE.FindAllStringIndex(log, -1) {
		m := log[loc[0]:loc[1]]
		// Not the derivation, which nix-build names first.
		if strings.HasSuffix(m, "-nixos-system-"+nonce+"-"+name) && !strings.HasPrefix(log[loc[1]:], ".drv") {
			return m
		}
	}
	return ""
}

func mustContain(t *testing.T, log string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(log, w) {
			t.Errorf("the log does not say %q", w)
		}
	}
	if t.Failed() {
		t.Logf("log:\n%s", log)
	}
}

func TestDeployFromCache(t *testing.T) {
	f := startFleet(t, 1)
	tg := f.Targets()[0]
	cfg := f.config(t, "", "", nil)
	base := f.base(t, cfg)
	if s := stateOf(t, tg); s.current != base || s.profile != base {
		t.Fatalf("after the base deploy %s runs %+v, want %s", tg.Name, s, base)
	}

	nonce := fmt.Sprint(time.Now().UnixNano())
	res, log := protectedJob(t, cfg, deployJobSrc(nonce, map[string]string{"t1": "ok"}, ""), true)
	sys := systemIn(log, nonce, "t1")
	if res.Err != nil || sys == "" {
		t.Fatalf("job: %v\n%s", res.Err, log)
	}
	s := stateOf(t, tg)
	if s.current != sys || s.profile != sys || s.generation != "system-2-link" {
		t.Fatalf("%s runs %+v, want %s at generation 2", tg.Name, s, sys)
	}
	if n := strings.Count(activations(t, tg), sys+" switch"); n != 1 {
		t.Fatalf("activated %d times:\n%s", n, activations(t, tg))
	}
	// From the cache: the target asked the cache for the system and its etc, and nothing was sent.
	if f.requested(".narinfo") < 2 || f.requested(".nar.zst") < 2 {
		t.Fatalf("the cache served %v", f.cache.Requests())
	}
	mustContain(t, log, "[t1] pulled 2 paths", "[t1] closure: 2 paths added", "removed", "reached t1 over a new connection",
		"confirmed: the watchdog is disarmed", "t1: deployed generation 2 ("+sys+")")
	if strings.Contains(log, "over SSH") {
		t.Fatalf("the runner sent paths:\n%s", log)
	}
	// Begun over one connection, confirmed over another (SSH_CONNECTION: client address and port).
	conns, err := tg.Run("cd /run/hearth-deploy/runs/$(ls -t /run/hearth-deploy/runs | head -n 1) && cat begin-connection confirm-connection")
	if l := strings.Fields(conns); err != nil || len(l) != 8 || l[1] == l[5] {
		t.Fatalf("connections of the begin and the confirmation: %v %q", err, conns)
	}
	// The generation records where it came from.
	out, err := hearthDeploy(t, cfg, "status", "t1")
	if err != nil || !regexp.MustCompile(`\* generation 2 .*`+regexp.QuoteMeta(sys)+`\n\s+job \d+, pipeline \d+, project group/project, ref main, commit a{40}`).MatchString(out) ||
		!strings.Contains(out, "generation 1") {
		t.Fatalf("status: %v\n%s", err, out)
	}

	// The same system again: nothing to do, quickly.
	start := time.Now()
	again := deployJobSrc(nonce, map[string]string{"t1": "ok"}, "")
	res, log = protectedJob(t, cfg, again, true)
	if res.Err != nil {
		t.Fatalf("second job: %v\n%s", res.Err, log)
	}
	mustContain(t, log, "nothing to do", "t1: unchanged")
	if n := strings.Count(activations(t, tg), sys+" switch"); n != 1 {
		t.Fatalf("the same system was activated again (%d)", n)
	}
	t.Logf("second job with a no-op deploy: %s", time.Since(start))

	// A job that leaves a link and fails deploys nothing; nor does the next job, which asks nothing.
	other := fmt.Sprint(time.Now().UnixNano())
	res, log = protectedJob(t, cfg, deployJobSrc(other, map[string]string{"t1": "ok"}, "    - exit 1\n"), true)
	if res.Err == nil {
		t.Fatalf("a failing script succeeded")
	}
	res, log = protectedJob(t, cfg, "deploy:\n  script:\n    - ls -la .hearth/deploy || true\n", true)
	if res.Err != nil || strings.Contains(log, "Deploying") {
		t.Fatalf("the job that asked nothing: %v\n%s", res.Err, log)
	}
	if s := stateOf(t, tg); s.current != sys {
		t.Fatalf("%s now runs %s", tg.Name, s.current)
	}
}

// A system missing from the cache is sent over SSH, and the log says so.
func TestDeployFallsBackToSSH(t *testing.T) {
	f := startFleet(t, 1)
	cfg := f.config(t, `push = "never"`, "", nil)
	nonce := fmt.Sprint(time.Now().UnixNano())
	res, log := protectedJob(t, cfg, deployJobSrc(nonce, map[string]string{"t1": "ok"}, ""), true)
	sys := systemIn(log, nonce, "t1")
	if res.Err != nil {
		t.Fatalf("job: %v\n%s", res.Err, log)
	}
	mustContain(t, log, "t1 could not pull 2 paths", "sent 2 paths", "over SSH", "t1: deployed generation 1")
	if s := stateOf(t, f.Targets()[0]); s.current != sys {
		t.Fatalf("runs %+v", s)
	}
}

// Activation failures roll back: the profile and the running system are the previous ones again.
func TestDeployActivationFailures(t *testing.T) {
	f := startFleet(t, 1)
	tg := f.Targets()[0]
	for _, tc := range []struct {
		name, mode, deploy, health string
		keep                       bool
		want                       []string
	}{
		{name: "exit 2", mode: "exit2", want: []string{"failed with exit code 2", "t1: rolled back"}},
		{name: "exit 4", mode: "exit4", want: []string{"exited 4: some units failed", "t1: rolled back"}},
		{name: "exit 4 kept", mode: "exit4", deploy: `on_unit_failure = "keep"`, keep: true, want: []string{"kept, as [deploy] on_unit_failure", "t1: deployed generation"}},
		{name: "hangs", mode: "hang", deploy: `activation_timeout = "4s"`, want: []string{"did not end within 4s", "t1: rolled back"}},
		{name: "health check fails", mode: "ok", health: "health_checks = [{ command = \"test -e /etc/healthy\" }]\nhealth_timeout = \"3s\"\n", want: []string{"health check `test -e /etc/healthy` on t1 failed", "t1: rolled back"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := f.config(t, "", tc.deploy, func(string) string { return tc.health })
			before := stateOf(t, tg)
			if before.current == "" {
				f.base(t, f.config(t, "", "", nil))
				before = stateOf(t, tg)
			}
			nonce := fmt.Sprint(time.Now().UnixNano())
			res, log := protectedJob(t, cfg, deployJobSrc(nonce, map[string]string{"t1": tc.mode}, ""), true)
			sys := systemIn(log, nonce, "t1")
			mustContain(t, log, tc.want...)
			if !strings.Contains(activations(t, tg), sys+" switch") {
				t.Fatalf("%s was never activated", sys)
			}
			after := stateOf(t, tg)
			if tc.keep {
				if res.Err != nil || after.current != sys {
					t.Fatalf("kept: job %v, target %+v", res.Err, after)
				}
				mustContain(t, log, "WARNING: t1: switch-to-configuration exited 4")
				return
			}
			if res.FailureReason != "script_failure" || res.ExitCode != 3 {
				t.Fatalf("job: %v (%s, exit code %d), want a script failure with exit code 3", res.Err, res.FailureReason, res.ExitCode)
			}
			if after != before {
				t.Fatalf("after the rollback %+v, before %+v", after, before)
			}
		})
	}
}

// untouched checks that nothing of hearth's ever ran on a target.
func untouched(t *testing.T, tg *sshtarget.Target) {
	t.Helper()
	out, err := tg.Run("ls /var/lib/hearth-deploy /run/hearth-deploy 2>&1; cat /var/log/hearth-test-activations 2>&1; readlink /nix/var/nix/profiles/system || true")
	if err != nil || strings.Contains(out, "nixos-system") || strings.Contains(out, "bin") || strings.Contains(out, "system-") {
		t.Fatalf("%s was touched: %v\n%s", tg.Name, err, out)
	}
}

// Refused requests fail the job with the deploy exit code, follow nothing, and leave the target
// untouched.
func TestDeployRefusedOnRealParts(t *testing.T) {
	f := startFleet(t, 1)
	tg := f.Targets()[0]
	cfg := f.config(t, "", "", nil)
	other := f.config(t, "", "", func(string) string { return "" })
	// The same target, admitting another project only.
	b, _ := os.ReadFile(other)
	os.WriteFile(other, []byte(strings.Replace(string(b), `projects = ["7"]`, `projects = ["99", "group/other"]`, 1)), 0o600)
	identity, err := os.ReadFile(f.Identity)
	if err != nil {
		t.Fatal(err)
	}
	// A directory on the host holding a valid request: reached only through a symlink.
	hostDir := t.TempDir()
	if err := os.Symlink(hostSystem(t, fmt.Sprint("host-", time.Now().UnixNano()), "ok"), filepath.Join(hostDir, "t1")); err != nil {
		t.Fatal(err)
	}
	nonce := fmt.Sprint(time.Now().UnixNano())
	for _, tc := range []struct {
		name, cfg, src string
		protected      bool
		want           string
	}{
		{"unprotected, whatever the variables say", cfg,
			deployJobSrc(nonce, map[string]string{"t1": "ok"}, "  variables:\n    CI_COMMIT_REF_PROTECTED: \"true\"\n"), false,
			`ref "main" is not protected`},
		{"project not allowed", other, deployJobSrc(nonce, map[string]string{"t1": "ok"}, ""), true,
			"project group/project (7) is not in its projects"},
		{"link to a host file", cfg, "deploy:\n  script:\n    - mkdir -p .hearth/deploy\n    - ln -s " + f.Identity + " .hearth/deploy/t1\n", true,
			`"` + f.Identity + `" is not a store path`},
		{"a store path that is no system", cfg, "deploy:\n  script:\n    - mkdir -p .hearth/deploy\n    - ln -s " + parts.Tools + " .hearth/deploy/t1\n", true,
			parts.Tools + " is not a NixOS system: it has no nixos-version"},
		{"request dir is a symlink", cfg, "deploy:\n  script:\n    - rm -rf .hearth/deploy; mkdir -p .hearth\n    - ln -s " + hostDir + " .hearth/deploy\n", true,
			".hearth/deploy is a symlink, or is under one"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, log := protectedJob(t, tc.cfg, tc.src, tc.protected)
			if res.FailureReason != "script_failure" || res.ExitCode != 3 {
				t.Fatalf("job: %v (%s, exit code %d), want a script failure with exit code 3\n%s", res.Err, res.FailureReason, res.ExitCode, log)
			}
			mustContain(t, log, tc.want, "nothing was deployed")
			if _, err := os.Lstat(filepath.Join(hostDir, "t1")); err != nil {
				t.Fatalf("the request outside the builds dir was touched: %v", err)
			}
			if strings.Contains(log, strings.TrimSpace(string(identity))[40:80]) {
				t.Fatalf("the job log holds the identity's content")
			}
			untouched(t, tg)
		})
	}
}

// An unknown host key and a changed one are refused with a sentence, before anything runs there.
func TestDeployHostKeyPinned(t *testing.T) {
	f := startFleet(t, 2)
	t1, t2 := f.Targets()[0], f.Targets()[1]
	sys := hostSystem(t, fmt.Sprint("keys-", time.Now().UnixNano()), "ok")
	empty := filepath.Join(t.TempDir(), "known_hosts")
	os.WriteFile(empty, nil, 0o600)
	// t2's key, pinned for t1's address: what an impostor at that address would present.
	changed := filepath.Join(t.TempDir(), "known_hosts")
	os.WriteFile(changed, []byte(strings.Replace(t2.HostKeyLine, t2.Addr, t1.Addr, 1)+"\n"), 0o600)
	for _, tc := range []struct{ name, file, want string }{
		{"unknown", empty, "is not pinned in " + empty + ": after checking that fingerprint"},
		{"changed", changed, "has changed: it presents ssh-ed25519 SHA256:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := f.config(t, "", "", nil)
			b, _ := os.ReadFile(cfg)
			os.WriteFile(cfg, []byte(strings.Replace(string(b), t1.KnownHosts, tc.file, 1)), 0o600)
			out, err := hearthDeploy(t, cfg, "t1="+sys)
			if err == nil {
				t.Fatalf("deployed with a %s host key:\n%s", tc.name, out)
			}
			mustContain(t, out, "t1: failed: the host key of t1 ("+t1.Addr+":22", tc.want)
			untouched(t, t1)
		})
	}
}

// deploying is a job whose deploy to a target that runs a base system is activating a slow
// system, for a test to interrupt.
type deploying struct {
	fleet      *fleet
	target     *sshtarget.Target
	cfg, nonce string
	before     state
	runner     *runner.Runner
	wait       func() (runner.Result, string)
}

func interruptedDeploy(t *testing.T, deploy string) deploying {
	t.Helper()
	d := deploying{fleet: startFleet(t, 1), nonce: fmt.Sprint(time.Now().UnixNano())}
	d.target = d.fleet.Targets()[0]
	d.cfg = d.fleet.config(t, "", deploy, nil)
	d.fleet.base(t, d.cfg)
	d.before = stateOf(t, d.target)
	d.runner, d.wait = startJob(t, d.cfg, deployJobSrc(d.nonce, map[string]string{"t1": "slow"}, ""))
	activating(t, d.target, d.nonce)
	return d
}

// The target's network goes down during the activation and stays down past confirm_timeout:
// hearth cannot confirm, and the watchdog on the target restores the previous generation by itself.
func TestDeployNetworkCutWatchdogRollsBack(t *testing.T) {
	d := interruptedDeploy(t, "activation_timeout = \"5s\"\nconfirm_timeout = \"3s\"")
	tg, before, nonce, wait := d.target, d.before, d.nonce, d.wait
	if err := tg.CutNetwork(); err != nil {
		t.Fatal(err)
	}
	res, log := wait()
	if res.FailureReason != "script_failure" || res.ExitCode != 3 {
		t.Fatalf("job: %v (%s, %d)\n%s", res.Err, res.FailureReason, res.ExitCode, log)
	}
	mustContain(t, log, "the connection dropped during the activation", "its watchdog rolls back")
	if err := tg.RestoreNetwork(); err != nil {
		t.Fatal(err)
	}
	sys := systemIn(log, nonce, "t1")
	if !strings.Contains(activations(t, tg), sys+" switch") {
		t.Fatalf("%s was not activated", sys)
	}
	waitFor(t, "the watchdog's rollback", 20*time.Second, func() bool { return stateOf(t, tg) == before })
	out, _ := tg.Run("cat /run/hearth-deploy/runs/*/rollback.log")
	if !strings.Contains(out, "no confirmation came within 3s") {
		t.Fatalf("rollback log:\n%s", out)
	}
}

// startJob runs a job in the background; wait returns its result and log.
func startJob(t *testing.T, cfg, src string) (r *runner.Runner, wait func() (runner.Result, string)) {
	t.Helper()
	log := &syncBuffer{}
	opts := jobOptions(t, cfg, src, "deploy", log)
	opts.Protected = true
	r = runner.New(opts)
	done := make(chan runner.Result, 1)
	go func() { done <- r.Run(context.Background()) }()
	finished := false
	t.Cleanup(func() {
		if !finished {
			r.Abort()
			<-done
		}
	})
	return r, func() (runner.Result, string) {
		res := <-done
		finished = true
		return res, log.String()
	}
}

// activating waits until the target has started activating a system of nonce's.
func activating(t *testing.T, tg *sshtarget.Target, nonce string) {
	t.Helper()
	waitFor(t, "the activation on "+tg.Name, 60*time.Second, func() bool {
		return strings.Contains(activations(t, tg), "-nixos-system-"+nonce)
	})
}

// The driver killed mid-activation: nobody confirms, so the watchdog rolls back, and hearth gc
// removes the lock and the GC root the dead driver left.
func TestDeployDriverKilled(t *testing.T) {
	d := interruptedDeploy(t, "")
	f, tg, cfg, before, nonce, wait := d.fleet, d.target, d.cfg, d.before, d.nonce, d.wait
	if out, err := exec.Command("pkill", "-KILL", "-f", cfg+" driver run").CombinedOutput(); err != nil {
		t.Fatalf("kill the driver: %v %s", err, out)
	}
	res, log := wait()
	if res.State == "success" {
		t.Fatalf("the job succeeded:\n%s", log)
	}
	if roots, _ := filepath.Glob(filepath.Join(f.gcRoots, "*-t1")); len(roots) != 1 {
		t.Fatalf("the killed deploy left GC roots %v, want one: the test proves nothing", roots)
	}
	waitFor(t, "the watchdog's rollback", 30*time.Second, func() bool { return stateOf(t, tg) == before })
	sys := systemIn(log, nonce, "t1")
	if !strings.Contains(activations(t, tg), sys+" switch") {
		t.Fatalf("%s was never activated", sys)
	}
	out, err := exec.Command(parts.Hearth, "--config", cfg, "gc", "--older-than", "1s").CombinedOutput()
	if err != nil {
		t.Fatalf("gc: %v\n%s", err, out)
	}
	locks, _ := filepath.Glob(filepath.Join(parts.StateDir(), "deploy", "*.lock"))
	runs, _ := filepath.Glob(filepath.Join(parts.StateDir(), "deploy", "runs", "*"))
	locks = append(locks, runs...)
	roots, _ := filepath.Glob(filepath.Join(f.gcRoots, "*"))
	if len(locks)+len(roots) != 0 || !strings.Contains(string(out), "removed the GC root of an ended deploy to t1") {
		t.Fatalf("after gc: locks %v, roots %v\n%s", locks, roots, out)
	}
	// The target's own lock is free: the next deploy goes ahead.
	if out, err := hearthDeploy(t, cfg, "t1="+sys); err != nil {
		t.Fatalf("deploy after the kill: %v\n%s", err, out)
	}
}

// A cancelled job stops its deploy within gitlab-runner's 10 s and rolls back what it activated.
func TestDeployCancelled(t *testing.T) {
	d := interruptedDeploy(t, "")
	tg, before, r, wait := d.target, d.before, d.runner, d.wait
	start := time.Now()
	r.Interrupt()
	res, log := wait()
	took := time.Since(start)
	if res.FailureReason != "job_canceled" || took > 10*time.Second {
		t.Fatalf("job: %s after %s\n%s", res.FailureReason, took, log)
	}
	mustContain(t, log, "cancelled: asking t1 to roll back now")
	waitFor(t, "the rollback", 20*time.Second, func() bool { return stateOf(t, tg) == before })
	// Rolled back because hearth asked, not because the watchdog's deadline passed.
	if out, _ := tg.Run("cat /run/hearth-deploy/runs/*/rollback.log"); !strings.Contains(out, "rolling back: the job was cancelled") {
		t.Fatalf("rollback log:\n%s", out)
	}
	t.Logf("the cancelled job ended %s after the cancel", took)
}

// With a canary, the canary goes first and alone; when it fails, the others are not started.
// Without one, targets deploy at once.
func TestDeployFleet(t *testing.T) {
	f := startFleet(t, 4)
	tgs := f.Targets()
	base := f.base(t, f.config(t, "", "", nil))
	t.Run("canary fails", func(t *testing.T) {
		cfg := f.config(t, "", "", func(name string) string {
			if name == "t1" {
				return "canary = true"
			}
			return ""
		})
		nonce := fmt.Sprint(time.Now().UnixNano())
		res, log := protectedJob(t, cfg, deployJobSrc(nonce, map[string]string{"t1": "exit2", "t2": "ok", "t3": "ok", "t4": "ok"}, ""), true)
		if res.ExitCode != 3 {
			t.Fatalf("job: %v\n%s", res.Err, log)
		}
		mustContain(t, log, "[t1] canary: deploying here first, alone", "t1: rolled back", "t2: not started: an earlier target failed",
			"t3: not started", "t4: not started")
		for _, tg := range tgs {
			if s := stateOf(t, tg); s.current != base || s.profile != base || strings.Contains(activations(t, tg), nonce+"-"+tg.Name+" ") && tg.Name != "t1" {
				t.Fatalf("%s runs %+v, want the base system and no activation of the job's", tg.Name, s)
			}
		}
	})
	t.Run("parallel", func(t *testing.T) {
		cfg := f.config(t, "", "", nil)
		nonce := fmt.Sprint(time.Now().UnixNano())
		res, log := protectedJob(t, cfg, deployJobSrc(nonce, map[string]string{"t1": "slow", "t2": "slow", "t3": "slow", "t4": "slow"}, ""), true)
		if res.Err != nil {
			t.Fatalf("job: %v\n%s", res.Err, log)
		}
		var first, last float64
		for i, tg := range tgs {
			sys := systemIn(log, nonce, tg.Name)
			if s := stateOf(t, tg); s.current != sys {
				t.Fatalf("%s runs %+v, want %s", tg.Name, s, sys)
			}
			var at float64
			fmt.Sscan(strings.Fields(activations(t, tg))[0], &at)
			if i == 0 || at < first {
				first = at
			}
			if at > last {
				last = at
			}
		}
		// Each activation takes 3 s: one after the other, the last would start 9 s after the first.
		if last-first > 2.5 {
			t.Fatalf("the activations started %.1f s apart: not in parallel", last-first)
		}
	})
}

// The deploy identity is read by hearth on the host, and appears nowhere inside the job's
// container while it deploys.
func TestDeployIdentityStaysOnHost(t *testing.T) {
	f := startFleet(t, 1)
	cfg := f.config(t, "", "", nil)
	key, err := os.ReadFile(f.Identity)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(key)), "\n")
	nonce := fmt.Sprint("identity-", time.Now().UnixNano())
	probe, probeLog := secretProbe(map[string]string{f.Identity: lines[1]}, nonce)
	res, log := protectedJob(t, cfg, deployJobSrc(nonce, map[string]string{"t1": "slow"}, probe), true)
	if res.Err != nil || !strings.Contains(log, "t1: deployed") || !strings.Contains(log, "\nprobe-done") {
		t.Fatalf("job: %v\n%s", res.Err, log)
	}
	logs, _ := filepath.Glob(filepath.Join(parts.BuildsRoot(), "*", "7-protected", "*", "group", "project", probeLog))
	if len(logs) != 1 {
		t.Fatalf("probe logs: %v", logs)
	}
	b, _ := os.ReadFile(logs[0])
	// The probe was looking while the deploy ran (the activation takes 3 s).
	if n := strings.Count(string(b), "iteration"); n < 20 || strings.Contains(string(b), "SECRET-") {
		t.Fatalf("probe (%d iterations):\n%s", n, b)
	}
}

// hearth deploy --dry-run changes nothing; --rollback goes back to the previous generation; status
// shows where each came from; config check names a missing known-hosts file.
func TestDeployCommand(t *testing.T) {
	f := startFleet(t, 1)
	tg := f.Targets()[0]
	cfg := f.config(t, "", "", nil)
	base := f.base(t, cfg)
	sys := hostSystem(t, fmt.Sprint("cmd-", time.Now().UnixNano()), "ok")
	out, err := hearthDeploy(t, cfg, "--dry-run", "t1="+sys)
	if err != nil {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	mustContain(t, out, "[t1] closure: 2 paths added", "dry run: nothing was changed")
	if s := stateOf(t, tg); s.current != base || strings.Contains(activations(t, tg), sys) {
		t.Fatalf("the dry run changed %+v", s)
	}
	if out, err := hearthDeploy(t, cfg, "t1="+sys); err != nil {
		t.Fatalf("deploy: %v\n%s", err, out)
	}
	out, err = hearthDeploy(t, cfg, "--rollback", "t1")
	if err != nil {
		t.Fatalf("rollback: %v\n%s", err, out)
	}
	mustContain(t, out, "rolling back to generation 1 ("+base+")", "t1: deployed generation 3")
	if s := stateOf(t, tg); s.current != base || s.profile != base {
		t.Fatalf("after --rollback %+v, want %s", s, base)
	}
	out, err = hearthDeploy(t, cfg, "status", "t1")
	if err != nil || !regexp.MustCompile(`\* generation 3 .*\n.*rolling back to generation 1`).MatchString(out) {
		t.Fatalf("status: %v\n%s", err, out)
	}

	b, _ := os.ReadFile(cfg)
	missing := filepath.Join(t.TempDir(), "nowhere")
	bad := filepath.Join(t.TempDir(), "bad.toml")
	os.WriteFile(bad, []byte(strings.Replace(string(b), tg.KnownHosts, missing, 1)), 0o600)
	check, err := exec.Command(parts.Hearth, "config", "check", bad).CombinedOutput()
	if err == nil || !regexp.MustCompile(`deploy\.targets\.t1\.known_hosts_file = "`+regexp.QuoteMeta(missing)+`" does not exist`).Match(check) {
		t.Fatalf("config check: %v\n%s", err, check)
	}
}

// hearth cache prune keeps what each deploy target runs, with its whole closure, however long ago
// it was pushed: a target rebuilt or rolled back pulls it from the cache again. It asks the target
// itself, over SSH, what it runs.
func TestCachePruneKeepsDeployedSystems(t *testing.T) {
	f := startFleet(t, 1)
	cacheDir := f.cache.Dir // the file cache the target pulls from
	cfg := f.config(t, "", "", nil)
	nonce := fmt.Sprint(time.Now().UnixNano())
	sys := hostSystem(t, "prune-deployed-"+nonce, "ok")
	if out, err := hearthDeploy(t, cfg, "t1="+sys); err != nil {
		t.Fatalf("deploy: %v\n%s", err, out)
	}
	if s := stateOf(t, f.Targets()[0]); s.current != sys {
		t.Fatalf("the target runs %s, want %s", s.current, sys)
	}
	undeployed := hostSystem(t, "prune-undeployed-"+nonce, "ok")
	if out, err := runHearth(cfg, "cache", "push", sys, undeployed); err != nil {
		t.Fatalf("push: %v\n%s", err, out)
	}
	// Both are pushed, so nothing keeps them queued: only what t1 runs keeps the deployed one.
	unqueue(t, daemonOf(t))
	closure := func(p string) []string {
		cmd := exec.Command("nix-store", "-qR", p)
		cmd.Env = daemonOf(t).NixEnv()
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		return strings.Fields(string(out))
	}
	kept, gone := closure(sys), closure(undeployed)
	// The two systems share their stand-in dependencies; what only the undeployed one has must go.
	gone = slices.DeleteFunc(gone, func(p string) bool { return slices.Contains(kept, p) })
	if len(gone) == 0 {
		t.Fatal("the undeployed system shares its whole closure with the deployed one")
	}
	long := time.Now().Add(-48 * time.Hour)
	files, _ := filepath.Glob(filepath.Join(cacheDir, "*.narinfo"))
	nars, _ := filepath.Glob(filepath.Join(cacheDir, "nar", "*"))
	for _, file := range append(files, nars...) {
		if err := os.Chtimes(file, long, long); err != nil {
			t.Fatal(err)
		}
	}
	// The control: without the target in the config, the deployed system would go too.
	noTarget := writeCacheConfig(t, "", "", fmt.Sprintf("\n[cache.file]\ndir = %q\n", cacheDir))
	out, err := runHearth(noTarget, "cache", "prune", "--older-than", "1d", "--dry-run")
	if err != nil || !strings.Contains(out, fmt.Sprintf("would remove %d paths", len(kept)+len(gone))) {
		t.Fatalf("dry run without the target: %v\n%s", err, out)
	}
	out, err = runHearth(cfg, "cache", "prune", "--older-than", "1d")
	if err != nil || !strings.Contains(out, fmt.Sprintf("removed %d paths", len(gone))) {
		t.Fatalf("prune: %v\n%s", err, out)
	}
	exists := func(p string) bool {
		_, err := os.Stat(filepath.Join(cacheDir, strings.SplitN(filepath.Base(p), "-", 2)[0]+".narinfo"))
		return err == nil
	}
	for _, p := range kept {
		if !exists(p) {
			t.Errorf("the prune removed %s, which t1's running system needs", p)
		}
	}
	for _, p := range gone {
		if exists(p) {
			t.Errorf("the prune kept %s, which nothing needs", p)
		}
	}
}

// Two deploys to one target from this host: the second waits for the first, and says so. From
// another runner host (its own lock dir), the target's own lock refuses the second.
func TestDeployLocks(t *testing.T) {
	f := startFleet(t, 1)
	cfg := f.config(t, "", "", nil)
	f.base(t, cfg)
	b, _ := os.ReadFile(cfg)
	otherHost := filepath.Join(t.TempDir(), "other.toml")
	os.WriteFile(otherHost, []byte(strings.Replace(string(b), parts.StateDir(), t.TempDir(), 1)), 0o600)
	for _, tc := range []struct {
		name, second, want string
		fails              bool
	}{
		{"same host", cfg, "waiting for another deploy to t1 from this host to finish", false},
		{"another host", otherHost, "t1 is being deployed by another runner (deploy ", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			slow := hostSystem(t, fmt.Sprint("slow-", time.Now().UnixNano()), "slow")
			next := hostSystem(t, fmt.Sprint("next-", time.Now().UnixNano()), "ok")
			first := make(chan string, 1)
			go func() {
				out, err := hearthDeploy(t, cfg, "t1="+slow)
				if err != nil {
					out += "\nFAILED: " + err.Error()
				}
				first <- out
			}()
			activating(t, f.Targets()[0], "slow-")
			out, err := hearthDeploy(t, tc.second, "t1="+next)
			if firstOut := <-first; strings.Contains(firstOut, "FAILED") {
				t.Fatalf("the first deploy: %s", firstOut)
			}
			if (err != nil) != tc.fails {
				t.Fatalf("the second deploy: %v\n%s", err, out)
			}
			mustContain(t, out, tc.want)
		})
	}
}

// A deploy user that is not root runs hearth-deploy-target through sudo, and nothing else.
func TestDeployAsSudoUser(t *testing.T) {
	f := startFleet(t, 1)
	tg := f.Targets()[0]
	cfg := f.config(t, "", "", func(string) string { return `user = "deploy"` })
	sys := hostSystem(t, fmt.Sprint("sudo-", time.Now().UnixNano()), "ok")
	// Not installed yet: a sentence that says what to do.
	out, err := hearthDeploy(t, cfg, "t1="+sys)
	if err == nil {
		t.Fatalf("deployed without hearth-deploy-target:\n%s", out)
	}
	mustContain(t, out, "needs hearth-deploy-target installed", "a sudo rule")
	script, err := exec.Command(parts.Hearth, "deploy", "target-script").Output()
	if err != nil {
		t.Fatal(err)
	}
	if err := tg.WriteFile("/usr/local/bin/hearth-deploy-target", script, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := tg.WriteFile("/etc/sudoers.d/hearth", []byte("deploy ALL=(root) NOPASSWD: /usr/local/bin/hearth-deploy-target\n"), 0o440); err != nil {
		t.Fatal(err)
	}
	if out, err := hearthDeploy(t, cfg, "t1="+sys); err != nil {
		t.Fatalf("deploy as deploy: %v\n%s", err, out)
	}
	if s := stateOf(t, tg); s.current != sys || s.profile != sys {
		t.Fatalf("runs %+v", s)
	}
	// The rule names the one command: the deploy user is not root otherwise.
	if out, err := tg.RunAs("deploy", "sudo -n id"); err == nil {
		t.Fatalf("sudo -n id worked for the deploy user: %s", out)
	}
}

// test activates without touching the profile; boot sets the profile and the boot entry only, and
// a boot entry that fails to install rolls the profile back.
func TestDeployActions(t *testing.T) {
	f := startFleet(t, 1)
	tg := f.Targets()[0]
	f.base(t, f.config(t, "", "", nil))
	for _, tc := range []struct {
		action, mode string
		// want is the target's state after the job, from the one before it and the job's system.
		want func(before state, sys string) state
		log  []string
	}{
		{"test", "ok", func(b state, sys string) state { return state{sys, b.profile, b.generation} },
			[]string{"test: the profile stays at generation", "t1: deployed ("}},
		{"boot", "ok", func(b state, sys string) state { return state{b.current, sys, ""} },
			[]string{"is the boot default; it becomes active at the next reboot", "t1: deployed generation"}},
		{"boot", "exit2", func(b state, _ string) state { return b },
			[]string{"t1 rolled back by itself: switch-to-configuration boot exited 1", "t1: rolled back"}},
		// Now the target runs the test system and boots the boot one: a failed switch goes back to
		// both, each as it was.
		{"switch", "exit2", func(b state, _ string) state { return b },
			[]string{"activating the previous system", "(test)", "(boot)", "t1: rolled back"}},
	} {
		t.Run(tc.action+" "+tc.mode, func(t *testing.T) {
			cfg := f.config(t, "", "", func(string) string { return fmt.Sprintf("action = %q", tc.action) })
			before := stateOf(t, tg)
			nonce := fmt.Sprint(time.Now().UnixNano())
			res, log := protectedJob(t, cfg, deployJobSrc(nonce, map[string]string{"t1": tc.mode}, ""), true)
			sys := systemIn(log, nonce, "t1")
			mustContain(t, log, tc.log...)
			if (res.Err == nil) != (tc.mode == "ok") {
				t.Fatalf("job: %v\n%s", res.Err, log)
			}
			got, want := stateOf(t, tg), tc.want(before, sys)
			if want.generation == "" {
				// A new generation, whichever number.
				want.generation = got.generation
				if got.generation == before.generation {
					t.Fatalf("boot made no new generation: %+v", got)
				}
			}
			if got != want {
				t.Fatalf("%s runs %+v, want %+v (before: %+v)", tg.Name, got, want, before)
			}
			if !strings.Contains(activations(t, tg), sys+" "+tc.action) {
				t.Fatalf("%s was not activated with %s:\n%s", sys, tc.action, activations(t, tg))
			}
		})
	}
}

// Four begins at once on one target, as four runner hosts would: one takes the target's lock, the
// others are refused, and none is left holding it once the one is confirmed.
func TestTargetLockRace(t *testing.T) {
	f := startFleet(t, 1)
	tg := f.Targets()[0]
	base := f.base(t, f.config(t, "", "", nil))
	out, err := tg.Run(`P=$(ls /var/lib/hearth-deploy/bin/hearth-deploy-target-* | head -n 1)
for i in 1 2 3 4; do (echo '{}' | $P begin race-$i switch ` + base + ` 5 20 >/tmp/begin-$i 2>&1; echo "$i $?" >/tmp/code-$i) & done
wait
cat /tmp/code-*`)
	if err != nil {
		t.Fatal(err)
	}
	var won []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		i, code, _ := strings.Cut(l, " ")
		switch code {
		case "0":
			won = append(won, i)
		case "75":
		default:
			t.Fatalf("begin %s exited %s:\n%s", i, code, out)
		}
	}
	if len(won) != 1 {
		t.Fatalf("begins that took the lock: %v\n%s", won, out)
	}
	if out, err := tg.Run(`P=$(ls /var/lib/hearth-deploy/bin/hearth-deploy-target-* | head -n 1)
sleep 1; $P confirm race-` + won[0] + ` && sleep 0.5 && $P hello | grep '^lock='`); err != nil || strings.TrimSpace(out) != "verdict=confirmed\nlock=" {
		t.Fatalf("after the confirmation: %v %q", err, out)
	}
}
