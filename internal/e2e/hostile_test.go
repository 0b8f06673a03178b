package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hearth-ci/hearth/executor/agent"
	"github.com/hearth-ci/hearth/jobcontainer"
	"github.com/hearth-ci/hearth/runner"
)

// A job can reach its agent's socket, and the agent logs to a file on the host (under the state
// dir, on /run). Requests with stage names of megabytes — what the job could send — are refused
// without being logged, and the log stays small.
func TestAgentLogStaysBounded(t *testing.T) {
	cfg := writeConfig(t, "", "")
	var log syncBuffer
	opts := jobOptions(t, cfg, "j:\n  script:\n    - sleep 4\n", "j", &log)
	r := runner.New(opts)
	done := make(chan runner.Result, 1)
	go func() { done <- r.Run(context.Background()) }()
	jobDir := filepath.Join(parts.StateDir(), "jobs", containerID(opts.JobID))
	sock := filepath.Join(jobDir, "agent", jobcontainer.AgentSocketName)
	waitFor(t, "the job's agent", 30*time.Second, func() bool { _, err := os.Stat(sock); return err == nil })
	refused := 0
	for i := 0; i < 20; i++ {
		_, err := agent.Run(context.Background(), sock, agent.Request{Stage: strings.Repeat("s", 4<<20), Script: "true"}, &syncBuffer{}, time.Second)
		if err != nil && strings.Contains(err.Error(), "longer than 128") {
			refused++
		}
	}
	fi, err := os.Stat(filepath.Join(jobDir, "agent.log"))
	if err != nil {
		t.Fatal(err)
	}
	if res := <-done; res.Err != nil {
		t.Fatalf("job: %v\n%s", res.Err, log.String())
	}
	// 80 MiB of stage names were sent; the log holds a few lines.
	if refused != 20 || fi.Size() > 64<<10 {
		t.Fatalf("%d of 20 requests refused; agent.log is %d bytes", refused, fi.Size())
	}
}

// The container's hardening, seen from inside a job: a read-only root and /sys, tmpfs /tmp and
// /root, no new privileges, seccomp filtering, and none of the capabilities that would let root in
// the container reach the host (in a user namespace, on top).
func TestContainerHardening(t *testing.T) {
	cfg := writeConfig(t, "", "")
	res, log := runJob(t, cfg, `probe:
  script:
    - grep -E '^(NoNewPrivs|Seccomp|CapEff):' /proc/self/status
    - if touch /hearth-probe 2>/dev/null; then echo ROOT-WRITABLE; else echo root-is-read-only; fi
    - if touch /sys/hearth-probe 2>/dev/null || (echo 1 > /sys/kernel/mm/ksm/run) 2>/dev/null; then echo SYS-WRITABLE; else echo sys-is-read-only; fi
    - awk '$5 == "/tmp" || $5 == "/root" { print "mount", $5, $(NF-2) }' /proc/self/mountinfo
    - echo uid_map $(cat /proc/self/uid_map)
`, "probe")
	if res.Err != nil {
		t.Fatalf("probe: %v\n%s", res.Err, log)
	}
	mustContain(t, log, "NoNewPrivs:\t1", "Seccomp:\t2", "root-is-read-only", "sys-is-read-only", "mount /tmp tmpfs", "mount /root tmpfs")
	if strings.Contains(log, "\nROOT-WRITABLE") || strings.Contains(log, "\nSYS-WRITABLE") {
		t.Fatalf("the probe could write where it must not:\n%s", log)
	}
	// Container root is an unprivileged host uid.
	if !strings.Contains(log, "uid_map 0 100000 65536") {
		t.Fatalf("uid map:\n%s", log)
	}
	var capEff uint64
	for _, l := range strings.Split(log, "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:\t"); ok {
			fmt.Sscanf(v, "%x", &capEff)
		}
	}
	for name, bit := range map[string]uint{"CAP_SYS_ADMIN": 21, "CAP_NET_ADMIN": 12, "CAP_SYS_PTRACE": 19, "CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17, "CAP_SYS_TIME": 25, "CAP_DAC_READ_SEARCH": 2} {
		if capEff&(1<<bit) != 0 {
			t.Errorf("the job has %s (CapEff %x)", name, capEff)
		}
	}
}

// A queued path rewritten in the store after it was registered (what a poisoning attack leaves)
// can never be pushed. With [cache] required, it used to fail every later job as a system failure;
// now its entry is rejected once, with a warning in the job log, and later jobs push normally.
func TestPoisonedPathIsRejectedNotRetried(t *testing.T) {
	cfg := writeCacheConfig(t, "", "required = true", "")
	d := daemonOf(t)
	nonce := fmt.Sprint("poison-", time.Now().UnixNano())
	outs, err := d.BuildChain(nonce, 1)
	if err != nil {
		t.Fatal(err)
	}
	poisoned := outs[0]
	// Rewrite the registered path, as the holder of a smuggled descriptor would.
	data := filepath.Join(poisoned, "bin", "data")
	if err := os.Chmod(data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(data, []byte("poisoned\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Nothing else uses it: out of the store with it afterwards.
	t.Cleanup(func() { d.Nix("nix-store", "--delete", poisoned) })
	for i := 0; i < 2; i++ {
		res, log := runJob(t, cfg, buildJob(fmt.Sprint(nonce, "-job-", i), 1, ""), "build")
		if res.Err != nil {
			t.Fatalf("job %d failed: %v\n%s", i, res.Err, log)
		}
		rejectedLine := strings.Contains(log, "rejected, and moved out of the queue") && strings.Contains(log, poisoned)
		if rejectedLine != (i == 0) {
			t.Fatalf("job %d: the rejection reported %v, want only in the first job\n%s", i, rejectedLine, log)
		}
	}
	out, err := exec.Command(parts.Hearth, "--config", cfg, "cache", "rejected").CombinedOutput()
	if err != nil || !strings.Contains(string(out), poisoned) || !strings.Contains(string(out), "NAR differs from the store's record") {
		t.Fatalf("cache rejected: %v\n%s", err, out)
	}
}
