package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-ci/hearth/config"
	"github.com/hearth-ci/hearth/executor/agent"
	"github.com/hearth-ci/hearth/internal/testenv"
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
	for _, network := range []string{"bridge", "host", "none"} {
		t.Run(network, func(t *testing.T) { hardening(t, network) })
	}
}

func hardening(t *testing.T, network string) {
	cfg := writeConfig(t, `network = "`+network+`"`, "")
	res, log := runJob(t, cfg, `probe:
  script:
    - grep -E '^(NoNewPrivs|Seccomp|CapEff):' /proc/self/status
    - if touch /hearth-probe 2>/dev/null; then echo ROOT-WRITABLE; else echo root-is-read-only; fi
    - if touch /sys/hearth-probe 2>/dev/null || (echo 1 > /sys/kernel/mm/ksm/run) 2>/dev/null; then echo SYS-WRITABLE; else echo sys-is-read-only; fi
    - awk '$5 == "/tmp" || $5 == "/root" { print "mount", $5, $(NF-2) }' /proc/self/mountinfo
    - echo uid_map $(cat /proc/self/uid_map)
    - echo cgroup-dirs $(ls /sys/fs/cgroup/memory | grep -c hearth-test || true)
    - echo own-memory-limit $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)
    - echo host-submounts $(grep -c -E ' /sys/(kernel/security|kernel/debug|fs/bpf) ' /proc/self/mountinfo || true)
`, "probe")
	if res.Err != nil {
		t.Fatalf("probe: %v\n%s", res.Err, log)
	}
	mustContain(t, log, "NoNewPrivs:\t1", "Seccomp:\t2", "root-is-read-only", "sys-is-read-only", "mount /tmp tmpfs", "mount /root tmpfs")
	if strings.Contains(log, "\nROOT-WRITABLE") || strings.Contains(log, "\nSYS-WRITABLE") {
		t.Fatalf("the probe could write where it must not:\n%s", log)
	}
	// /sys shows the job its own cgroup (limited to its own memory), not the host's tree.
	mustContain(t, log, "cgroup-dirs 0", "own-memory-limit 4294967296")
	// Container root is an unprivileged host uid.
	if want := fmt.Sprintf("uid_map 0 %d 65536", config.Default().Jobs.UIDMapStart); !strings.Contains(log, want) {
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

// A stage ends within a few seconds of its script's last command, with its output, even when the
// script leaves an orphan holding the stage's output: here a cat that a timeout orphaned, still
// reading (with sendfile, holding the output pipe's lock) a connection to a web server on the
// host's loopback that never closes it. The job log says what was killed, and the script can
// still write to /dev/stderr (which a socket in the pipe's place would not allow).
func TestStageEndsDespiteAnOrphanHoldingItsOutput(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "secret"), []byte("host-secret\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := exec.Command("/usr/bin/python3", "-m", "http.server", fmt.Sprint(port), "--bind", "127.0.0.1", "--directory", dir)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	waitFor(t, "the web server", 10*time.Second, func() bool {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	cfg := writeConfig(t, hostNetwork, "")
	src := fmt.Sprintf("hang:\n  script:\n    - timeout 3 bash -c 'exec 3<>/dev/tcp/127.0.0.1/%d && echo GET /secret >&3 && cat <&3' 2>/dev/null || echo NO-LOOPBACK; echo AFTER\n    - echo via-dev-stderr > /dev/stderr\n", port)
	var log syncBuffer
	start := time.Now()
	done := make(chan runner.Result, 1)
	go func() { done <- runner.New(jobOptions(t, cfg, src, "hang", &log)).Run(context.Background()) }()
	var res runner.Result
	select {
	case res = <-done:
	case <-time.After(60 * time.Second):
		// What hung before: the orphaned cat held the output pipe's lock while it waited on
		// the connection, and nothing could write to the pipe or read from it.
		t.Fatalf("the job has not ended a minute after its script's last command:\n%s", log.String())
	}
	took := time.Since(start)
	if res.State != "success" || !strings.Contains(log.String(), "\nAFTER") || !strings.Contains(log.String(), "\nvia-dev-stderr") || !strings.Contains(log.String(), "hearth: killed cat") {
		t.Fatalf("after %s: %s\n%s", took.Round(time.Millisecond), res, log.String())
	}
	if took > 20*time.Second {
		t.Fatalf("the job took %s; its script was done after about 3 s", took.Round(time.Millisecond))
	}
	t.Logf("the job took %s", took.Round(time.Millisecond))
}

var probeTool struct {
	once sync.Once
	dir  string
	err  error
}

// The attacks of a hostile job (internal/tools/probe), each refused: mount, new namespaces, raw
// and packet sockets, the kernel's crypto (AF_ALG) and vsock sockets, keyrings, device nodes, writes to /proc/sys and /sys, ptrace of the agent and
// its environment, the host's processes, reboot, the clock, kernel modules, and the sockets of
// containerd and the nix-daemon's state on the host. A process it leaves behind with setsid
// nohup does not survive cleanup.
func TestHostileJobIsRefused(t *testing.T) {
	probeTool.once.Do(func() {
		probeTool.dir = filepath.Join(parts.Dir, "probe")
		_, probeTool.err = testenv.BuildStatic("./internal/tools/probe", filepath.Join(probeTool.dir, "probe"))
	})
	if probeTool.err != nil {
		t.Fatal(probeTool.err)
	}
	env := fmt.Sprintf("\n[environments.hostile]\nstore_path = %q\nmounts = [\"%s:/probe\"]\n", parts.Environment, probeTool.dir)
	cfg := writeConfig(t, `default_environment = "hostile"`, env)
	marker := fmt.Sprintf("%d.%d", time.Now().Unix()%100000, os.Getpid())
	sockets := []string{parts.ContainerdSocket, "/run/containerd/containerd.sock", "/nix/var/nix/daemon-socket/socket.host"}
	src := fmt.Sprintf("hostile:\n  script:\n    - /probe/probe %s\n    - setsid nohup sleep %s > /dev/null 2>&1 &\n    - echo left-behind\n", strings.Join(sockets, " "), marker)
	res, log := runJob(t, cfg, src, "hostile")
	if res.State != "success" {
		t.Fatalf("%s\n%s", res, log)
	}
	probes := regexp.MustCompile(`(?m)^probe (.+): (denied|ALLOWED).*$`).FindAllStringSubmatch(log, -1)
	if len(probes) != 19+len(sockets) {
		t.Fatalf("the probe ran %d attacks, want %d:\n%s", len(probes), 19+len(sockets), log)
	}
	// The socket families the seccomp filter refuses are refused by it, not merely missing from
	// this kernel: EPERM, where a kernel without them says EAFNOSUPPORT.
	seccomped := map[string]bool{"af-alg-socket": true, "vsock-socket": true}
	for _, p := range probes {
		if p[2] != "denied" {
			t.Errorf("a job could %s", p[1])
		}
		if seccomped[p[1]] && !strings.Contains(p[0], "operation not permitted") {
			t.Errorf("the seccomp filter does not refuse %s: %s", p[1], p[0])
		}
		t.Log(p[0])
	}
	// The control: on the host, outside the filter, the same sockets are not refused with EPERM.
	// Only those run there: the other attacks would change the host.
	host, err := exec.Command(filepath.Join(probeTool.dir, "probe"), "-only", "af-alg-socket", "vsock-socket").Output()
	if err != nil {
		t.Fatal(err)
	}
	for name := range seccomped {
		line := regexp.MustCompile(`(?m)^probe ` + name + `: .*$`).Find(host)
		if line == nil || strings.Contains(string(line), "operation not permitted") || len(bytes.Split(bytes.TrimSpace(host), []byte("\n"))) != len(seccomped) {
			t.Errorf("on the host, outside any job, the probe says %q: the job's EPERM proves nothing", line)
		}
	}
	if t.Failed() {
		t.Fatalf("the job log:\n%s", log)
	}
	if pids := processesMatching("sleep " + marker); len(pids) != 0 {
		t.Fatalf("the job's setsid nohup sleep survived cleanup: pids %v", pids)
	}
}
