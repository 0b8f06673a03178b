package e2e

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-ci/hearth/jobcontainer"
)

// A driver killed with SIGKILL in the middle of a job (the runner died with it, so no cleanup
// comes) leaves a container behind; hearth gc removes it and all that was its, and leaves a running
// job alone.
func TestGCRemovesOrphansOnly(t *testing.T) {
	cfg := writeConfig(t, "", "")
	orphan := newDriverJob(t, cfg, "")
	running := newDriverJob(t, cfg, "")
	for _, j := range []*driverJob{orphan, running} {
		if code, out := j.call("prepare"); code != 0 {
			t.Fatalf("prepare exited %d:\n%s", code, out)
		}
	}
	defer running.call("cleanup")

	start := func(j *driverJob) *exec.Cmd {
		cmd := j.command("run", j.scriptFile("build_script", "sleep 600\n"), "build_script")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the stage to start", 20*time.Second, func() bool { return len(sleepers(j.containerID())) > 0 })
		return cmd
	}
	killed := start(orphan)
	alive := start(running)
	defer func() { _ = alive.Process.Kill(); _ = alive.Wait() }()
	if err := killed.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = killed.Wait()
	if !strings.Contains(ctrList(t, "containers"), orphan.containerID()) {
		t.Fatal("the killed job's container is already gone; nothing for gc to do")
	}

	time.Sleep(1500 * time.Millisecond)
	out, err := exec.Command(parts.Hearth, "--config", cfg, "gc", "--older-than", "1s").CombinedOutput()
	if err != nil {
		t.Fatalf("gc: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "removed container "+orphan.containerID()) {
		t.Fatalf("gc did not report removing the orphan:\n%s", out)
	}
	assertNothingLeft(t, orphan.containerID())
	if strings.Contains(string(out), running.containerID()) {
		t.Fatalf("gc touched the running job:\n%s", out)
	}
	if !strings.Contains(ctrList(t, "containers"), running.containerID()) || len(sleepers(running.containerID())) == 0 {
		t.Fatal("gc removed the running job or its stage")
	}
	if _, err := os.Stat(filepath.Join(parts.StateDir(), "jobs", running.containerID(), "agent", "agent.sock")); err != nil {
		t.Fatalf("gc removed the running job's state: %v", err)
	}
	if err := alive.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := alive.Wait(); err == nil {
		t.Fatal("the stopped stage reported success")
	}
	if code, out := running.call("cleanup"); code != 0 {
		t.Fatalf("cleanup exited %d:\n%s", code, out)
	}
	assertNothingLeft(t, running.containerID())
}

// A job that swaps its agent's socket for a symlink to another job's agent does not get its later
// stages run there: the driver refuses the symlink.
func TestJobCannotRedirectStagesToAnotherJob(t *testing.T) {
	cfg := writeConfig(t, "", "")
	victim := newDriverJob(t, cfg, "")
	attacker := newDriverJob(t, cfg, "")
	for _, j := range []*driverJob{victim, attacker} {
		if code, out := j.call("prepare"); code != 0 {
			t.Fatalf("prepare exited %d:\n%s", code, out)
		}
		defer j.call("cleanup")
	}
	target := filepath.Join(parts.StateDir(), "jobs", victim.containerID(), "agent", "agent.sock")
	code, out := attacker.runScript("build_script", "rm /.hearth/run/agent.sock && ln -s "+target+" /.hearth/run/agent.sock && echo swapped\n")
	if code != 0 || !strings.Contains(out, "swapped") {
		t.Fatalf("the attacker's script: exit %d\n%s", code, out)
	}
	code, out = attacker.runScript("after_script", "echo RAN-IN-$(hostname)\n")
	if strings.Contains(out, "RAN-IN-") {
		t.Fatalf("the attacker's next stage ran (exit %d):\n%s", code, out)
	}
	if code != 2 || !strings.Contains(out, "symlink") {
		t.Fatalf("want a system failure naming the symlink, got exit %d:\n%s", code, out)
	}
	if code, out := victim.runScript("build_script", "echo still-mine\n"); code != 0 || !strings.Contains(out, "still-mine") {
		t.Fatalf("the victim's job was disturbed: exit %d\n%s", code, out)
	}
}

// Cleanup succeeds when prepare never ran (gitlab-runner calls it after a failed config or
// prepare), and again after it has already removed everything: it can run any number of times.
func TestCleanupIsIdempotent(t *testing.T) {
	cfg := writeConfig(t, "", "")
	never := newDriverJob(t, cfg, "")
	for i := 0; i < 2; i++ {
		if code, out := never.call("cleanup"); code != 0 {
			t.Fatalf("cleanup %d of a job that was never prepared exited %d:\n%s", i+1, code, out)
		}
	}
	assertNothingLeft(t, never.containerID())

	j := newDriverJob(t, cfg, "")
	if code, out := j.call("prepare"); code != 0 {
		t.Fatalf("prepare exited %d:\n%s", code, out)
	}
	if !strings.Contains(ctrList(t, "containers"), j.containerID()) {
		t.Fatal("prepare made no container")
	}
	for i := 0; i < 2; i++ {
		if code, out := j.call("cleanup"); code != 0 {
			t.Fatalf("cleanup %d exited %d:\n%s", i+1, code, out)
		}
		assertNothingLeft(t, j.containerID())
	}
	// A stage after cleanup is refused, as the runner's fault, not run somewhere else.
	code, out := j.runScript("build_script", "echo RAN\n")
	if code != 2 || strings.Contains(out, "RAN") || !strings.Contains(out, "is not running") {
		t.Fatalf("a stage after cleanup: exit %d\n%s", code, out)
	}
}

// A job that answers its agent's socket itself, saying a stage runs for ever, does not keep gc
// away: gc judges from the driver calls' traces on the host. A job younger than --older-than
// survives; a stage still running past the job's timeout does not.
func TestGCDoesNotTrustTheAgent(t *testing.T) {
	cfg := writeConfig(t, "", "")
	liar := newDriverJob(t, cfg, "")
	if code, out := liar.call("prepare"); code != 0 {
		t.Fatalf("prepare exited %d:\n%s", code, out)
	}
	defer liar.call("cleanup")
	// The job's own server in place of its agent's socket (the socket is in the job's agent dir).
	sock := filepath.Join(parts.StateDir(), "jobs", liar.containerID(), "agent", jobcontainer.AgentSocketName)
	if err := os.Remove(sock); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			// A ping frame answered with a status that says a stage is running.
			body := []byte(`{"running":1,"idle_since":"` + time.Now().Format(time.RFC3339) + `"}`)
			c.Write(append([]byte{'P', 0, 0, 0, byte(len(body))}, body...))
			c.Close()
		}
	}()
	if out, err := exec.Command(parts.Hearth, "--config", cfg, "gc", "--older-than", "1h").CombinedOutput(); err != nil || strings.Contains(string(out), liar.containerID()) {
		t.Fatalf("gc --older-than 1h removed a job that is seconds old: %v\n%s", err, out)
	}
	time.Sleep(1500 * time.Millisecond)
	out, err := exec.Command(parts.Hearth, "--config", cfg, "gc", "--older-than", "1s").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "removed container "+liar.containerID()+": no driver call for") {
		t.Fatalf("gc spared the job whose socket says it is busy: %v\n%s", err, out)
	}
	assertNothingLeft(t, liar.containerID())

	// A stage that runs past the job's timeout (2 s here) is not spared by its driver's lock.
	late := newDriverJob(t, cfg, "")
	b, _ := os.ReadFile(filepath.Join(late.dir, "response.json"))
	os.WriteFile(filepath.Join(late.dir, "response.json"), []byte(strings.Replace(string(b), `"job_info"`, `"runner_info":{"timeout":2},"job_info"`, 1)), 0o600)
	if code, out := late.call("prepare"); code != 0 {
		t.Fatalf("prepare exited %d:\n%s", code, out)
	}
	defer late.call("cleanup")
	stage := late.command("run", late.scriptFile("build_script", "sleep 600\n"), "build_script")
	if err := stage.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = stage.Process.Kill(); _ = stage.Wait() }()
	waitFor(t, "the stage to start", 20*time.Second, func() bool { return len(sleepers(late.containerID())) > 0 })
	if out, err := exec.Command(parts.Hearth, "--config", cfg, "gc", "--older-than", "1s").CombinedOutput(); err != nil || strings.Contains(string(out), late.containerID()) {
		t.Fatalf("gc removed a job within its timeout while its stage runs: %v\n%s", err, out)
	}
	time.Sleep(3500 * time.Millisecond)
	out, err = exec.Command(parts.Hearth, "--config", cfg, "gc", "--older-than", "1s").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "removed container "+late.containerID()+": it was created") || !strings.Contains(string(out), "past the job's timeout of 2s") {
		t.Fatalf("gc spared a job past its timeout: %v\n%s", err, out)
	}
}
