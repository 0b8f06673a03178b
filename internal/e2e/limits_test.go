package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// cgroupValue reads one of the job container's cgroup files on the host (cgroup v1 here).
func cgroupValue(t *testing.T, id, controller, file string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup", controller, "hearth-test", id, file))
	if err != nil {
		t.Fatalf("read the job's cgroup: %v", err)
	}
	return strings.TrimSpace(string(b))
}

// The limits are the container's: its cgroup holds them, and a job that asks for less gets less.
func TestLimitsAreEnforcedByTheCgroup(t *testing.T) {
	cfg := writeConfig(t, "memory = \"256MiB\"\nmemory_max = \"512MiB\"\ncpus = 1.5\npids = 200\nnofile = 1000\ntmpfs_size = \"8MiB\"\n", "")
	j := newDriverJob(t, cfg, "")
	j.vars = map[string]string{"HEARTH_PIDS": "100"}
	code, out := j.call("prepare")
	if code != 0 {
		t.Fatalf("prepare: %d\n%s", code, out)
	}
	defer j.call("cleanup")
	if !strings.Contains(out, "Limits: memory 256.0 MiB, CPUs 1.5, processes 100, open files 1000, /tmp and /root 8.0 MiB each") {
		t.Fatalf("the job log does not say the limits:\n%s", out)
	}
	id := j.containerID()
	for _, c := range []struct{ controller, file, want string }{
		{"memory", "memory.limit_in_bytes", "268435456"},
		{"memory", "memory.memsw.limit_in_bytes", "268435456"},
		{"cpu", "cpu.cfs_quota_us", "150000"},
		{"cpu", "cpu.cfs_period_us", "100000"},
		{"pids", "pids.max", "100"},
	} {
		if got := cgroupValue(t, id, c.controller, c.file); got != c.want {
			t.Errorf("%s/%s = %s, want %s", c.controller, c.file, got, c.want)
		}
	}
	// A job filling /tmp stops at its size; open files stop at nofile.
	code, out = j.runScript("build_script", `head -c 20000000 /dev/zero > /tmp/fill 2>&1 || echo tmp-is-full
echo "tmp holds $(wc -c < /tmp/fill)"
echo "nofile $(ulimit -n)"
ulimit -n 100000 2>/dev/null && echo RAISED || echo cannot-raise
`)
	if code != 0 {
		t.Fatalf("run: %d\n%s", code, out)
	}
	mustContain(t, out, "tmp-is-full", "tmp holds 8388608", "nofile 1000", "cannot-raise")
}

// Asking for more than the runner allows fails the job with a sentence naming the key.
func TestLimitRequestsAboveTheMaximumFail(t *testing.T) {
	cfg := writeConfig(t, "memory = \"256MiB\"\nmemory_max = \"512MiB\"\n", "")
	for _, tc := range []struct{ name, value, want string }{
		{"HEARTH_MEMORY", "1GiB", `HEARTH_MEMORY = "1GiB" is more than this runner allows ([jobs] memory_max = 512.0 MiB)`},
		{"HEARTH_PIDS", "99999", `HEARTH_PIDS = "99999" is more than this runner allows ([jobs] pids_max = 4096)`},
		{"HEARTH_MEMORY", "lots", `HEARTH_MEMORY = "lots" is not a limit: give a size such as "2GiB"`},
	} {
		j := newDriverJob(t, cfg, "")
		j.vars = map[string]string{tc.name: tc.value}
		code, out := j.call("prepare")
		j.call("cleanup")
		if code != 1 || !strings.Contains(out, tc.want) {
			t.Errorf("%s=%s: prepare exited %d, want the build failure %q:\n%s", tc.name, tc.value, code, tc.want, out)
		}
	}
}

// A memory hog is killed at the job's limit, and the job fails with a sentence naming it; without
// the limit (the control) the same script runs to its end.
func TestMemoryHogStopsAtTheLimit(t *testing.T) {
	hog := "hog:\n  script:\n    - x=$(head -c 300000000 /dev/zero | tr '\\0' a); echo survived ${#x}\n"
	res, log := runJob(t, writeConfig(t, "memory = \"64MiB\"\n", ""), hog, "hog")
	if res.State == "success" || strings.Contains(log, "survived 300000000") {
		t.Fatalf("the hog ran to its end under a 64 MiB limit: %s\n%s", res, log)
	}
	mustContain(t, log, "reached the job's memory limit of 64.0 MiB", "HEARTH_MEMORY")
	res, log = runJob(t, writeConfig(t, "memory = 0\n", ""), hog, "hog")
	if res.State != "success" || !strings.Contains(log, "survived 300000000") {
		t.Fatalf("without a limit (the control) the hog did not survive: %s\n%s", res, log)
	}
}

// A fork bomb stops at pids, and the host stays responsive while it runs; cleanup ends it. There
// is no control: a fork bomb without the limit would take the test machine down with it.
func TestForkBombStopsAtPids(t *testing.T) {
	cfg := writeConfig(t, "pids = 64\n", "")
	j := newDriverJob(t, cfg, "")
	if code, out := j.call("prepare"); code != 0 {
		t.Fatalf("prepare: %d\n%s", code, out)
	}
	id := j.containerID()
	ran := make(chan string, 1)
	go func() {
		_, out := j.runScript("build_script", "bomb() { bomb | bomb & }\nbomb 2>/dev/null\nwait\n")
		ran <- out
	}()
	most, worst := 0, time.Duration(0)
	for deadline := time.Now().Add(4 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if n, err := strconv.Atoi(cgroupValue(t, id, "pids", "pids.current")); err == nil {
			most = max(most, n)
		}
		start := time.Now()
		if err := exec.Command("/bin/true").Run(); err != nil {
			t.Fatalf("the host cannot start a process during the bomb: %v", err)
		}
		worst = max(worst, time.Since(start))
	}
	if code, out := j.call("cleanup"); code != 0 {
		t.Fatalf("cleanup: %d\n%s", code, out)
	}
	select {
	case <-ran:
	case <-time.After(20 * time.Second):
		t.Fatal("the bomb's stage did not end after cleanup")
	}
	if most < 48 || most > 64 {
		t.Fatalf("the bomb held at most %d tasks under pids = 64 (fewer than 48: it never ran into the limit)", most)
	}
	if worst > 2*time.Second {
		t.Fatalf("the host took %s to start a process during the bomb", worst)
	}
	assertNothingLeft(t, id)
	t.Logf("the bomb held %d tasks; the host started a process in at most %s", most, worst)
}
