package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-ci/hearth/internal/testenv/sshtarget"
	"github.com/hearth-ci/hearth/runner"
)

// The deploy tests run jobs that build a stand-in NixOS system and deploy it to real hosts: Debian
// with systemd as PID 1 under systemd-nspawn, each in its own network namespace with its own Nix
// store and sshd. The system's switch-to-configuration records each activation on the target and
// does what its mode says.

// stc is the stand-in switch-to-configuration for a mode: ok, exit4, exit2, hang, slow, cutnet.
func stc(mode string) string {
	end := map[string]string{
		"ok":     "exit 0",
		"slow":   "sleep 3; exit 0",
		"exit4":  "echo 'warning: the following units failed: nginx.service'; exit 4",
		"exit2":  "echo \"Activation script snippet 'users' failed (1)\"; exit 2",
		"hang":   "exec sleep 3600",
		"cutnet": "ip link set eth0 down; exit 0",
	}[mode]
	return `#!/bin/sh
top=${0%/bin/switch-to-configuration}
echo "$(date +%s.%N) $top $1" >> /var/log/hearth-test-activations
echo "stand-in activation of $top ($1)"
[ "$1" = boot ] && exit 0
ln -sfn "$top" /run/current-system
` + end + "\n"
}

// nixString quotes s as a Nix string.
func nixString(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`, "${", `\${`, "\n", `\n`).Replace(s) + `"`
}

// systemExpr is a Nix expression for a stand-in NixOS system named for nonce: a toplevel with
// nixos-version and bin/switch-to-configuration, referring to an etc path of its own.
func systemExpr(nonce, mode string) string {
	return fmt.Sprintf(`let tools = builtins.storePath %q;
  etc = derivation { name = "etc-%s"; system = "x86_64-linux"; builder = "${tools}/bin/bash"; PATH = "${tools}/bin"; args = [ "-c" "mkdir -p $out; echo %s > $out/motd" ]; };
in derivation {
  name = "nixos-system-%s"; system = "x86_64-linux"; builder = "${tools}/bin/bash"; PATH = "${tools}/bin";
  inherit etc; stc = %s;
  args = [ "-c" "mkdir -p $out/bin; echo 26.05.%s > $out/nixos-version; ln -s $etc $out/etc; printf '%%s' \"$stc\" > $out/bin/switch-to-configuration; chmod +x $out/bin/switch-to-configuration" ];
}
`, parts.Tools, nonce, nonce, nonce, nixString(stc(mode)), nonce)
}

// fleet is a test's targets, the cache they pull from and a config naming them.
type fleet struct {
	*sshtarget.Fleet
	cacheDir, key, pub, gcRoots string
	// requests are the paths the cache server was asked for.
	mu       sync.Mutex
	requests []string
}

func (f *fleet) requested(suffix string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, r := range f.requests {
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
	f := &fleet{Fleet: sf, cacheDir: t.TempDir()}
	f.gcRoots = fmt.Sprintf("/nix/var/nix/gcroots/hearth-test-%d", time.Now().UnixNano())
	t.Cleanup(func() { os.RemoveAll(f.gcRoots) })
	key, pub := keyPair(t, "team-deploy")
	f.key, f.pub = key, pub
	files := http.FileServer(http.Dir(f.cacheDir))
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.requests = append(f.requests, r.URL.Path)
		f.mu.Unlock()
		files.ServeHTTP(w, r)
	})
	for _, tg := range sf.Targets() {
		l, err := net.Listen("tcp", net.JoinHostPort(tg.HostAddr, "8080"))
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: handler}
		go srv.Serve(l)
		t.Cleanup(func() { srv.Close() })
		// Nothing but the test's cache: the targets have no other network.
		if err := tg.WriteFile("/etc/nix/nix.conf", []byte("build-users-group =\nsandbox = false\nsubstituters =\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// config is a hearth config whose cache is the fleet's and whose targets are the fleet's, each
// with extra lines from target (by name) and [deploy] lines from deploy.
func (f *fleet) config(t *testing.T, cache, deploy string, target func(name string) string) string {
	t.Helper()
	tables := fmt.Sprintf("\n[cache.file]\ndir = %q\nsigning_key_file = %q\n\n[deploy]\nconfirm_timeout = \"5s\"\nactivation_timeout = \"20s\"\ngc_roots_dir = %q\n%s\n", f.cacheDir, f.key, f.gcRoots, deploy)
	for _, tg := range f.Targets() {
		extra := ""
		if target != nil {
			extra = target(tg.Name)
		}
		tables += fmt.Sprintf("\n[deploy.targets.%s]\nhost = %q\nknown_hosts_file = %q\nidentity_file = %q\nprojects = [\"7\"]\nsubstituters = [\"http://%s:8080\"]\ntrusted_public_keys = [%q]\n%s\n",
			tg.Name, tg.Addr, tg.KnownHosts, f.Identity, tg.HostAddr, f.pub, extra)
	}
	return writeCacheConfig(t, "", cache, tables)
}

// deployJobSrc is a job that builds a system per target (name → mode) and links each for deploy.
func deployJobSrc(nonce string, systems map[string]string, extra string) string {
	var b strings.Builder
	b.WriteString("deploy:\n  script:\n    - mkdir -p .hearth/deploy\n")
	for _, name := range sortedKeys(systems) {
		fmt.Fprintf(&b, "    - |\n      cat > %s.nix <<'EOF'\n%s      EOF\n    - nix-build -o .hearth/deploy/%s %s.nix\n", name, indent(strings.TrimRight(systemExpr(nonce+"-"+name, systems[name]), "\n"), "      ")+"\n", name, name)
	}
	b.WriteString(extra)
	return b.String()
}

func sortedKeys(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	for i := range ks {
		for j := i + 1; j < len(ks); j++ {
			if ks[j] < ks[i] {
				ks[i], ks[j] = ks[j], ks[i]
			}
		}
	}
	return ks
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
	f := filepath.Join(t.TempDir(), "system.nix")
	if err := os.WriteFile(f, []byte(systemExpr(nonce, mode)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := daemonOf(t).Nix("nix-build", "--no-out-link", f)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
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
		t.Fatalf("the cache served %v", f.requests)
	}
	mustContain(t, log, "[t1] pulled 2 paths", "[t1] closure: 2 paths added", "removed", "reached t1 over a new connection",
		"confirmed: the watchdog is disarmed", "t1: deployed generation 2 ("+sys+")")
	if strings.Contains(log, "over SSH") {
		t.Fatalf("the runner sent paths:\n%s", log)
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
		name, mode, unitFailure, health string
		keep                            bool
		want                            []string
	}{
		{name: "exit 2", mode: "exit2", want: []string{"failed with exit code 2", "t1: rolled back"}},
		{name: "exit 4", mode: "exit4", want: []string{"exited 4: some units failed", "t1: rolled back"}},
		{name: "exit 4 kept", mode: "exit4", unitFailure: `on_unit_failure = "keep"`, keep: true, want: []string{"kept, as [deploy] on_unit_failure", "t1: deployed generation"}},
		{name: "health check fails", mode: "ok", health: "health_checks = [{ command = \"test -e /etc/healthy\" }]\nhealth_timeout = \"3s\"\n", want: []string{"health check `test -e /etc/healthy` on t1 failed", "t1: rolled back"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := f.config(t, "", tc.unitFailure, func(string) string { return tc.health })
			before := stateOf(t, tg)
			if before.current == "" {
				f.base(t, cfg)
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
