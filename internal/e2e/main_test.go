// Package e2e runs jobs through the hearth binary on the real parts: a private containerd with
// Debian's runc, and a private nix-daemon with the sandbox on. gitlab-runner is the emulation in
// package runner. These tests need root; `go test -short` skips them, and nothing else does.
package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-ci/hearth/internal/testlog"

	"github.com/hearth-ci/hearth/driver"
	"github.com/hearth-ci/hearth/internal/testenv"
	"github.com/hearth-ci/hearth/runner"
)

var parts *testenv.Parts

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		fmt.Println("SKIPPED (-short): the end-to-end tests on containerd and nix-daemon did not run")
		os.Exit(0)
	}
	var err error
	parts, err = testenv.Start(testenv.Options{})
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: cannot start the test environment: %v\n", err)
		os.Exit(1)
	}
	if out, err := parts.Ctr(context.Background(), "default", "version"); err == nil {
		// Which daemon the tests ran against goes in the log: Debian's 1.6, or the one
		// HEARTH_TEST_CONTAINERD names.
		fmt.Printf("e2e: containerd server %s\n", serverVersion(out))
	}
	code := m.Run()
	if s3server != nil {
		s3server.Close()
	}
	if outside.o != nil {
		outside.o.Stop()
	}
	parts.Stop()
	os.Exit(code)
}

func serverVersion(ctrVersion string) string {
	_, server, _ := strings.Cut(ctrVersion, "Server:")
	for _, line := range strings.Split(server, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "Version:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// syncBuffer is read while it is written.
type syncBuffer = testlog.Buffer

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func writeConfig(t *testing.T, jobs, tables string) string {
	t.Helper()
	return writeCacheConfig(t, jobs, "", tables)
}

// writeCacheConfig writes a config for the test's own daemon (see daemonOf).
func writeCacheConfig(t *testing.T, jobs, cache, tables string) string {
	t.Helper()
	p, err := daemonOf(t).WriteConfig(jobs, cache, tables)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

var daemons struct {
	sync.Mutex
	of map[*testing.T]*testenv.Daemon
}

// daemonOf returns the nix-daemon of test t, started on first use and stopped when t ends: jobs
// of the test build through it, so its post-build-hook queue holds only what the test built and
// its log only the test's connections. A flush drains the queue of the daemon its config names, so
// a test never pushes what another test left queued.
func daemonOf(t *testing.T) *testenv.Daemon {
	t.Helper()
	daemons.Lock()
	defer daemons.Unlock()
	if d := daemons.of[t]; d != nil {
		return d
	}
	d, err := parts.NewDaemon()
	if err != nil {
		t.Fatal(err)
	}
	if daemons.of == nil {
		daemons.of = map[*testing.T]*testenv.Daemon{}
	}
	daemons.of[t] = d
	t.Cleanup(func() {
		d.Stop()
		daemons.Lock()
		delete(daemons.of, t)
		daemons.Unlock()
	})
	return d
}

var jobIDs struct {
	sync.Mutex
	next int64
}

func nextJobID() int64 {
	jobIDs.Lock()
	defer jobIDs.Unlock()
	if jobIDs.next == 0 {
		jobIDs.next = time.Now().Unix() % 1000000 * 1000
	}
	jobIDs.next++
	return jobIDs.next
}

// jobOptions are runner options for one job of .gitlab-ci.yml text src.
func jobOptions(t *testing.T, cfg, src, name string, log *syncBuffer) runner.Options {
	t.Helper()
	job, err := runner.ParseJob([]byte(src), name)
	if err != nil {
		t.Fatal(err)
	}
	drv := func(stage string) runner.Command {
		return runner.Command{Exec: parts.Hearth, Args: []string{"--config", cfg, "driver", stage}}
	}
	return runner.Options{
		Custom: runner.Custom{Config: drv("config"), Prepare: drv("prepare"), Run: drv("run"), Cleanup: drv("cleanup"),
			GracefulKillTimeout: 30 * time.Second},
		Job: job, JobID: nextJobID(), ProjectID: 7, ProjectPath: "group/project",
		RepoURL: "https://gitlab.example.com/group/project.git", Ref: "main", SHA: strings.Repeat("a", 40),
		RunnerToken: "tok", Timeout: 5 * time.Minute, Log: log, RunnerLog: log,
		PrepareRetryInterval: 200 * time.Millisecond,
	}
}

// runJob runs one job to its end and returns the result and the job log.
func runJob(t *testing.T, cfg, src, name string) (runner.Result, string) {
	t.Helper()
	var log syncBuffer
	res := runner.New(jobOptions(t, cfg, src, name, &log)).Run(context.Background())
	return res, log.String()
}

// derivation is a Nix expression that builds with the test tools and takes about sleep seconds.
func derivation(nonce string, sleep int) string {
	return fmt.Sprintf(`let tools = builtins.storePath "%s"; in
derivation {
  name = "hearth-e2e-%s";
  system = "x86_64-linux";
  builder = "${tools}/bin/bash";
  PATH = "${tools}/bin";
  args = [ "-c" "sleep %d; echo built > $out" ];
}`, parts.Tools, nonce, sleep)
}

// ctrList lists a kind of containerd object (containers, tasks, snapshots) in hearth's test namespace.
func ctrList(t *testing.T, kind string) string {
	t.Helper()
	args := []string{kind, "ls"}
	if kind != "snapshots" { // ctr 1.6 has no -q for snapshots; their keys are in the listing anyway
		args = append(args, "-q")
	}
	out, err := parts.Ctr(context.Background(), "hearth-test", args...)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// assertNothingLeft checks that no container, task, snapshot, process or job state of id remains.
func assertNothingLeft(t *testing.T, id string) {
	t.Helper()
	for _, kind := range []string{"containers", "tasks", "snapshots"} {
		if out := ctrList(t, kind); strings.Contains(out, id) {
			t.Errorf("%s of %s remain: %s", kind, id, out)
		}
	}
	if pids := testenv.ProcessesMatching(id); len(pids) > 0 {
		t.Errorf("processes of %s remain: %v", id, pids)
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil && inContainer(pid, id) {
			t.Errorf("process %d still runs in the cgroup of %s", pid, id)
		}
	}
	if _, err := os.Stat(filepath.Join(parts.StateDir(), "jobs", id)); err == nil {
		t.Errorf("state dir of %s remains", id)
	}
	claims, _ := filepath.Glob(filepath.Join(parts.BuildsRoot(), "*", "*", "*.claim"))
	for _, c := range claims {
		if b, _ := os.ReadFile(c); strings.TrimSpace(string(b)) == id {
			t.Errorf("builds dir claim %s of %s remains", c, id)
		}
	}
}

// containerID is the name hearth gives the container of a job run with jobOptions.
func containerID(jobID int64) string {
	p := &driver.Payload{ID: jobID}
	p.GitInfo.RepoURL = "https://gitlab.example.com/group/project.git"
	return driver.ContainerID(p)
}
