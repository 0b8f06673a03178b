package e2e

import (
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Jobs cancelled at random points — prepare killed or stopped, a stage stopped or its driver
// killed, the runner gone between stages, cleanup killed — and then hearth gc: nothing is left
// of any of them. CI runs 20 jobs; HEARTH_SOAK_JOBS=100 runs the long soak.
func TestSoakCancelledJobsLeaveNothing(t *testing.T) {
	jobs := 20
	if v, err := strconv.Atoi(os.Getenv("HEARTH_SOAK_JOBS")); err == nil && v > 0 {
		jobs = v
	}
	cfg := writeConfig(t, "", "")
	seed := time.Now().UnixNano()
	rng := rand.New(rand.NewSource(seed))
	t.Logf("seed %d", seed)
	modes := []string{"prepare killed", "prepare stopped", "stage stopped", "stage's driver killed", "runner gone between stages", "cleanup killed", "to the end"}
	count := map[string]int{}
	var ids []string
	start := time.Now()
	for i := 0; i < jobs; i++ {
		mode := modes[rng.Intn(len(modes))]
		count[mode]++
		j := newDriverJob(t, cfg, "")
		ids = append(ids, j.containerID())
		after := func(max time.Duration) time.Duration { return time.Duration(rng.Int63n(int64(max))) }
		switch mode {
		case "prepare killed":
			signalAfter(t, j, "prepare", syscall.SIGKILL, after(600*time.Millisecond))
		case "prepare stopped":
			signalAfter(t, j, "prepare", syscall.SIGTERM, after(600*time.Millisecond))
			j.call("cleanup")
		case "stage stopped", "stage's driver killed":
			if code, out := j.call("prepare"); code != 0 {
				t.Fatalf("job %d (%s): prepare: %d\n%s", i, mode, code, out)
			}
			sig := syscall.SIGTERM
			if mode == "stage's driver killed" {
				sig = syscall.SIGKILL
			}
			signalAfter(t, j, "run", sig, after(800*time.Millisecond), j.scriptFile("build_script", "sleep 3 & sleep 2; echo done"), "build_script")
			if sig == syscall.SIGTERM {
				j.call("cleanup")
			}
		case "runner gone between stages":
			if code, out := j.call("prepare"); code != 0 {
				t.Fatalf("job %d (%s): prepare: %d\n%s", i, mode, code, out)
			}
			j.runScript("build_script", "echo one stage")
		case "cleanup killed":
			if code, out := j.call("prepare"); code != 0 {
				t.Fatalf("job %d (%s): prepare: %d\n%s", i, mode, code, out)
			}
			signalAfter(t, j, "cleanup", syscall.SIGKILL, after(200*time.Millisecond))
		case "to the end":
			if code, out := j.call("prepare"); code != 0 {
				t.Fatalf("job %d (%s): prepare: %d\n%s", i, mode, code, out)
			}
			j.runScript("build_script", "echo done")
			j.call("cleanup")
		}
	}
	took := time.Since(start)
	// What the interrupted jobs left, for gc: without it the checks below would prove nothing.
	left := 0
	out := ctrList(t, "containers")
	for _, id := range ids {
		if strings.Contains(out, id) {
			left++
		}
	}
	if interrupted := count["prepare killed"] + count["stage's driver killed"] + count["runner gone between stages"] + count["cleanup killed"]; interrupted > 0 && left == 0 {
		t.Fatalf("%d jobs were interrupted without their cleanup, yet none left a container for gc", interrupted)
	}
	t.Logf("%d containers left for gc", left)
	if out, err := runHearth(cfg, "gc", "--older-than", "1ns"); err != nil {
		t.Fatalf("gc: %v\n%s", err, out)
	}
	t.Logf("%d jobs (%v) in %s, %s per job, then gc", jobs, count, took.Round(time.Millisecond), (took / time.Duration(jobs)).Round(time.Millisecond))
	for _, kind := range []string{"containers", "tasks", "snapshots"} {
		out := ctrList(t, kind)
		for _, id := range ids {
			if strings.Contains(out, id) {
				t.Errorf("%s of %s remain after gc:\n%s", kind, id, out)
			}
		}
	}
	for _, left := range []string{"jobs/*", "netns/*", "cni/hearth/10.*"} {
		if m, _ := filepath.Glob(filepath.Join(parts.StateDir(), left)); len(m) != 0 {
			t.Errorf("left under the state dir after gc: %v", m)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(parts.BuildsRoot(), "*", "*", "*.claim")); len(m) != 0 {
		t.Errorf("builds-dir claims left after gc: %v", m)
	}
	// A container's shim exits a moment after the container is deleted: allow it a few seconds.
	for _, id := range ids {
		deadline := time.Now().Add(10 * time.Second)
		for len(processesMatching(id)) != 0 && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if pids := processesMatching(id); len(pids) != 0 {
			var what []string
			for _, pid := range pids {
				cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
				stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
				what = append(what, fmt.Sprintf("%d %q (stat %s)", pid, strings.ReplaceAll(string(cmd), "\x00", " "), strings.TrimSpace(string(stat))))
			}
			t.Errorf("processes of %s left after gc: %s", id, strings.Join(what, "; "))
		}
	}
}

// signalAfter starts a driver call and sends it sig after d, then waits for it to end.
func signalAfter(t *testing.T, j *driverJob, stage string, sig syscall.Signal, d time.Duration, args ...string) {
	t.Helper()
	cmd := j.command(stage, args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	timer := time.AfterFunc(d, func() { cmd.Process.Signal(sig) })
	cmd.Wait()
	timer.Stop()
}
