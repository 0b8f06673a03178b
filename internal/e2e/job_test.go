package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hearth-ci/hearth/config"
	"github.com/hearth-ci/hearth/runner"
)

// A job builds a derivation through the host's daemon; a second job building the same derivation
// finds it in the shared store and builds nothing.
func TestBuildThroughDaemonAndReuse(t *testing.T) {
	cfg := writeConfig(t, "", "")
	nonce := fmt.Sprint(time.Now().UnixNano())
	src := fmt.Sprintf(`build:
  script:
    - |
      cat > drv.nix <<'EOF'
%s
      EOF
    - nix-build --no-out-link drv.nix > out-path
    - cat "$(cat out-path)"
`, indent(derivation(nonce, 1), "      "))
	res, log1 := runJob(t, cfg, src, "build")
	if res.State != "success" {
		t.Fatalf("first job: %s\n%s", res, log1)
	}
	buildLine := regexp.MustCompile(`building '/nix/store/[a-z0-9]{32}-hearth-e2e-` + nonce + `\.drv'`)
	if !buildLine.MatchString(log1) || !strings.Contains(log1, "\nbuilt\n") {
		t.Fatalf("first job did not build the derivation:\n%s", log1)
	}
	res, log2 := runJob(t, cfg, src, "build")
	if res.State != "success" {
		t.Fatalf("second job: %s\n%s", res, log2)
	}
	if buildLine.MatchString(log2) || !strings.Contains(log2, "\nbuilt\n") {
		t.Fatalf("second job built again (or did not get the output):\n%s", log2)
	}
}

func indent(s, prefix string) string {
	return prefix + strings.ReplaceAll(s, "\n", "\n"+prefix)
}

// exit 42 in the script fails the job with exit code 42, through BUILD_EXIT_CODE_FILE; after_script
// still runs.
func TestScriptExitCode(t *testing.T) {
	cfg := writeConfig(t, "", "")
	res, log := runJob(t, cfg, `fail:
  script:
    - echo about to fail
    - exit 42
    - echo not reached
  after_script:
    - echo after-script-ran
`, "fail")
	if res.FailureReason != "script_failure" || res.ExitCode != 42 {
		t.Fatalf("result %+v, want script_failure with exit code 42\n%s", res, log)
	}
	if strings.Contains(log, "\nnot reached") || !strings.Contains(log, "\nafter-script-ran") {
		t.Fatalf("wrong stages ran:\n%s", log)
	}
	if !strings.Contains(log, "ERROR: Job failed: exit code 42") {
		t.Fatalf("log does not end with the failure:\n%s", log)
	}
}

// The driver contract itself: run exits BUILD_FAILURE_EXIT_CODE and writes 42 to
// BUILD_EXIT_CODE_FILE; a later successful stage does not leave 42 there.
func TestBuildExitCodeFile(t *testing.T) {
	cfg := writeConfig(t, "", "")
	j := newDriverJob(t, cfg, "")
	if code, out := j.call("prepare"); code != 0 {
		t.Fatalf("prepare exited %d:\n%s", code, out)
	}
	defer j.call("cleanup")
	code, out := j.runScript("build_script", "echo failing; exit 42")
	if code != 1 {
		t.Fatalf("run exited %d, want BUILD_FAILURE_EXIT_CODE 1:\n%s", code, out)
	}
	if got := j.exitCodeFile(); got != "42" {
		t.Fatalf("BUILD_EXIT_CODE_FILE holds %q, want 42", got)
	}
	code, out = j.runScript("after_script", "echo fine")
	if code != 0 {
		t.Fatalf("run exited %d:\n%s", code, out)
	}
	if got := j.exitCodeFile(); got != "0" {
		t.Fatalf("after a successful stage BUILD_EXIT_CODE_FILE holds %q, want 0 (the earlier stage's 42 must not survive)", got)
	}
	// A stage name the driver has never heard of runs like any other.
	code, out = j.runScript("step_release", "echo released")
	if code != 0 || !strings.Contains(out, "released") {
		t.Fatalf("unknown stage: exit %d:\n%s", code, out)
	}
}

// Inside a job the store is read-only, and the daemon treats the job as an unprivileged,
// untrusted user: its own log names the mapped uid without "(trusted)", and a post-build-hook the
// job asks for is not run (for a trusted client it would be, as root — the control case below).
func TestJobIsUntrustedAndStoreReadOnly(t *testing.T) {
	// No push: every connection the daemon logs during the job is then the job's own.
	cfg := writeCacheConfig(t, "", `push = "never"`, "")
	nonce := fmt.Sprint(time.Now().UnixNano())
	marker := "/tmp/hearth-hook-ran-" + nonce
	defer os.Remove(marker)
	d := daemonOf(t)
	// The first job after a daemon starts is the one in which hearth asks the daemon (as root)
	// which Nix it runs: a job before, so that what the daemon logs from here on is the job's.
	if res, log := runJob(t, cfg, "first:\n  script:\n    - true\n", "first"); res.State != "success" {
		t.Fatalf("%s\n%s", res, log)
	}
	before, err := os.ReadFile(d.NixLog)
	if err != nil {
		t.Fatal(err)
	}
	res, log := runJob(t, cfg, fmt.Sprintf(`probe:
  script:
    - if touch /nix/store/hearth-probe 2>/dev/null; then echo STORE-WRITABLE; exit 1; fi
    - if mkdir /nix/store/hearth-probe-dir 2>/dev/null; then echo STORE-WRITABLE; exit 1; fi
    - printf '#!/bin/sh\ntouch %s\n' > hook.sh && chmod +x hook.sh
    - nix-store --add hook.sh > hook-path
    - |
      cat > drv.nix <<'EOF'
%s
      EOF
    - nix-build --no-out-link --option post-build-hook "$(cat hook-path)" drv.nix
`, marker, indent(derivation("hook-"+nonce, 0), "      ")), "probe")
	if res.State != "success" {
		t.Fatalf("%s\n%s", res, log)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the daemon ran a post-build-hook the job chose: the job is a trusted user")
	}
	after, err := os.ReadFile(d.NixLog)
	if err != nil {
		t.Fatal(err)
	}
	window := string(after[len(before):])
	conns := regexp.MustCompile(`accepted connection from pid \d+, user (\S+)( \(trusted\))?`).FindAllStringSubmatch(window, -1)
	if len(conns) < 2 {
		t.Fatalf("the daemon logged %d connections during the job, want at least 2:\n%s", len(conns), window)
	}
	for _, c := range conns {
		if c[2] != "" || c[1] == "root" {
			t.Fatalf("the daemon saw a job connection as %q:\n%s", c[0], window)
		}
		if want := strconv.FormatUint(uint64(config.Default().Jobs.UIDMapStart), 10); c[1] != want {
			t.Fatalf("the daemon saw uid %s, want the mapped uid %s", c[1], want)
		}
	}

	// Control: the same request from a trusted client (host root) does run the hook, so the check
	// above can fail.
	hook := filepath.Join(t.TempDir(), "hook.sh")
	if err := os.WriteFile(hook, []byte("#!/bin/sh\ntouch "+marker+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	drv := filepath.Join(t.TempDir(), "drv.nix")
	if err := os.WriteFile(drv, []byte(derivation("hook-control-"+nonce, 0)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Nix("nix-build", "--no-out-link", "--option", "post-build-hook", hook, drv); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Fatal("control failed: a trusted client's post-build-hook did not run, so the test proves nothing")
	}
}

// SIGTERM during `sleep 600` ends the stage within 10 s; after_script still runs; after cleanup
// nothing of the job remains.
func TestCancelStopsStage(t *testing.T) {
	cfg := writeConfig(t, "", "")
	var log syncBuffer
	opts := jobOptions(t, cfg, `sleeper:
  script:
    - echo sleeping
    - sleep 600
  after_script:
    - echo after-script-ran
`, "sleeper", &log)
	r := runner.New(opts)
	done := make(chan runner.Result, 1)
	go func() { done <- r.Run(context.Background()) }()
	id := containerID(opts.JobID)
	waitFor(t, "the script to start sleeping", 30*time.Second, func() bool {
		return strings.Contains(log.String(), "\nsleeping\n") && len(sleepers(id)) > 0
	})
	start := time.Now()
	r.Cancel()
	waitFor(t, "the build_script stage to end", 10*time.Second, func() bool {
		return strings.Contains(log.String(), ":build_script\r") && strings.Count(log.String(), ":build_script\r") == 2
	})
	stopped := time.Since(start)
	res := <-done
	if res.FailureReason != "job_canceled" {
		t.Fatalf("result %+v\n%s", res, log.String())
	}
	if !strings.Contains(log.String(), "\nafter-script-ran") {
		t.Fatalf("after_script did not run:\n%s", log.String())
	}
	t.Logf("stage stopped %s after SIGTERM", stopped)
	assertNothingLeft(t, id)
}

// sleepers finds the job's sleep 600 processes on the host.
func sleepers(id string) []int {
	var pids []int
	for _, pid := range processesMatching("sleep 600") {
		if inContainer(pid, id) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// A prepare that fails three times, each followed by cleanup, leaves nothing behind. The failure
// comes late: the environment has no bash, which only the agent inside the started container sees.
func TestPrepareFailsThreeTimes(t *testing.T) {
	nobash, err := parts.Nix("nix-store", "--add", mkdirWith(t, "hearth-no-bash", map[string]string{"bin/hello": "#!/nowhere\n"}))
	if err != nil {
		t.Fatal(err)
	}
	cfg := writeConfig(t, `default_environment = "nobash"`, fmt.Sprintf("\n[environments.nobash]\nstore_path = %q\n", nobash))
	var log syncBuffer
	opts := jobOptions(t, cfg, "j:\n  script: [\"true\"]\n", "j", &log)
	res := runner.New(opts).Run(context.Background())
	if res.FailureReason != "runner_system_failure" {
		t.Fatalf("result %+v\n%s", res, log.String())
	}
	if n := strings.Count(log.String(), "no bash on PATH"); n != 3 {
		t.Fatalf("prepare failed %d times for want of bash, want 3:\n%s", n, log.String())
	}
	assertNothingLeft(t, containerID(opts.JobID))
}

// An image the policy does not allow fails the job as the job's fault, saying what is allowed.
func TestImageNotAllowed(t *testing.T) {
	cfg := writeConfig(t, `allowed_images = ["registry.example.com/ci/*"]`, "")
	res, log := runJob(t, cfg, "j:\n  image: docker.io/evil/miner:latest\n  script: [\"true\"]\n", "j")
	if res.FailureReason != "script_failure" {
		t.Fatalf("result %+v, want a build failure\n%s", res, log)
	}
	for _, want := range []string{`image "docker.io/evil/miner:latest" is not allowed`, "environments: default", "registry.example.com/ci/*"} {
		if !strings.Contains(log, want) {
			t.Fatalf("job log lacks %q:\n%s", want, log)
		}
	}
	if strings.Count(log, "not allowed") != 1 {
		t.Fatalf("a refused image must not be retried:\n%s", log)
	}
}

// containerd unreachable is a system failure that names the socket.
func TestContainerdUnreachable(t *testing.T) {
	missing := filepath.Join(parts.Dir, "no-such-containerd.sock")
	cfg := writeConfig(t, "", "")
	b, _ := os.ReadFile(cfg)
	if err := os.WriteFile(cfg, []byte(strings.Replace(string(b), parts.ContainerdSocket, missing, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	res, log := runJob(t, cfg, "j:\n  script: [\"true\"]\n", "j")
	if res.FailureReason != "runner_system_failure" {
		t.Fatalf("result %+v\n%s", res, log)
	}
	if !strings.Contains(log, "containerd at "+missing+" is unreachable") {
		t.Fatalf("job log does not name the socket:\n%s", log)
	}
}

// An unknown config key reaches the job log with the key and its line.
func TestUnknownConfigKeyInJobLog(t *testing.T) {
	cfg := writeConfig(t, "bogus_key = 1", "")
	res, log := runJob(t, cfg, "j:\n  script: [\"true\"]\n", "j")
	if res.FailureReason != "runner_system_failure" {
		t.Fatalf("result %+v\n%s", res, log)
	}
	b, _ := os.ReadFile(cfg)
	line := 1 + strings.Count(string(b[:strings.Index(string(b), "bogus_key")]), "\n")
	if !strings.Contains(log, fmt.Sprintf(`line %d: unknown key "jobs.bogus_key"`, line)) {
		t.Fatalf("job log lacks the key and line:\n%s", log)
	}
}

// Four jobs of one project at once, on two cores: all succeed, each in a builds dir of its own.
func TestEightJobsAtOnce(t *testing.T) {
	const n = 8
	cfg := writeConfig(t, "", "")
	src := `j:
  script:
    - echo "$CI_JOB_ID" > "$CI_PROJECT_DIR/owner"
    - sleep 1
    - test "$(cat "$CI_PROJECT_DIR/owner")" = "$CI_JOB_ID"
    - test "$(ls /builds)" = group
    - test "$(ls /builds/group)" = project
    - test "$(ip -o link | wc -l)" = 2
    - echo "addr $(ip -4 -o addr show eth0 | awk '{print $4}')"
    - echo "slot-ok $CI_JOB_ID"
`
	type result struct{ msg, addr string }
	results := make(chan result, n)
	for i := 0; i < n; i++ {
		go func() {
			res, log := runJob(t, cfg, src, "j")
			if res.State != "success" || !strings.Contains(log, "slot-ok") {
				results <- result{msg: fmt.Sprintf("job failed: %s\n%s", res, log)}
				return
			}
			addr := regexp.MustCompile(`(?m)^addr (\S+)$`).FindStringSubmatch(log)
			if addr == nil {
				results <- result{msg: "no address in the job log:\n" + log}
				return
			}
			results <- result{addr: addr[1]}
		}()
	}
	addrs := map[string]bool{}
	for i := 0; i < n; i++ {
		r := <-results
		if r.msg != "" {
			t.Error(r.msg)
		}
		addrs[r.addr] = true
	}
	if t.Failed() {
		return
	}
	// Each its own network: one address of its own on the bridge, no other link than lo.
	if len(addrs) != n {
		t.Fatalf("the %d jobs had %d distinct addresses: %v", n, len(addrs), addrs)
	}
	owners, _ := filepath.Glob(filepath.Join(parts.BuildsRoot(), "*", "7", "*", "group", "project", "owner"))
	seen := map[string]bool{}
	for _, o := range owners {
		b, _ := os.ReadFile(o)
		seen[strings.TrimSpace(string(b))] = true
	}
	if len(seen) < n {
		t.Fatalf("the %d jobs used %d distinct builds dirs (%v), want %d", n, len(seen), owners, n)
	}
}

// Jobs on protected refs get builds and cache dirs apart from the rest of their project: what an
// unprotected job leaves behind (a git hook, a cache entry) is not there for a protected one.
func TestProtectedRefsHaveTheirOwnDirs(t *testing.T) {
	cfg := writeCacheConfig(t, "", `push = "never"`, "")
	leave := "j:\n  script:\n    - mkdir -p .git/hooks && echo planted > .git/hooks/post-checkout && echo planted > /cache/poison\n"
	look := "j:\n  script:\n    - if [ -e .git/hooks/post-checkout ] || [ -e /cache/poison ]; then echo FOUND-PLANTED; exit 1; fi\n"
	run := func(src string, protected bool) (runner.Result, string) {
		var log syncBuffer
		opts := jobOptions(t, cfg, src, "j", &log)
		opts.Protected = protected
		return runner.New(opts).Run(context.Background()), log.String()
	}
	if res, log := run(leave, false); res.State != "success" {
		t.Fatalf("%s\n%s", res, log)
	}
	if res, log := run(look, true); res.State != "success" {
		t.Fatalf("a protected job found what an unprotected one left: %s\n%s", res, log)
	}
	// The control: an unprotected job does find it, so the check above can fail.
	if res, log := run(look, false); res.State == "success" || !strings.Contains(log, "\nFOUND-PLANTED") {
		t.Fatalf("control: %s\n%s", res, log)
	}
}
