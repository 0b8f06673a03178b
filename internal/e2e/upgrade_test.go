package e2e

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hearth-ci/hearth/internal/testenv"
	"github.com/hearth-ci/hearth/jobcontainer"
	"github.com/hearth-ci/hearth/runner"
)

// beforeVersions is the last commit whose agent and driver stated no protocol version (protocol
// 0). When the protocol changes, add the commit before the change.
const beforeVersions = "8805cfaebf52742925c92a1bc9206b175c9611be"

// oldHearth builds hearth as it was at rev, from this checkout's history.
func oldHearth(t *testing.T, rev string) string {
	t.Helper()
	root, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("git", "-C", root, "cat-file", "-e", rev+"^{commit}").CombinedOutput(); err != nil {
		if os.Getenv("HEARTH_CI") != "" {
			t.Fatalf("commit %s is not in this checkout's history (%v: %s): the upgrade test needs it", rev, err, out)
		}
		t.Skipf("commit %s is not in this checkout's history: %s", rev, out)
	}
	src := filepath.Join(t.TempDir(), "src")
	if out, err := exec.Command("git", "-C", root, "worktree", "add", "--detach", src, rev).CombinedOutput(); err != nil {
		t.Fatalf("git worktree add: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("git", "-C", root, "worktree", "remove", "--force", src).Run() })
	bin := filepath.Join(parts.Dir, "build", "hearth-"+rev[:12])
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/hearth")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build hearth %s: %v\n%s", rev, err, out)
	}
	return bin
}

// An upgrade of hearth with jobs in flight: a job prepared by the old hearth (its agent, the old
// binary, bind-mounted into the container) runs its later stages with the new driver; and, after a
// rollback, one prepared by the new hearth runs its stages with the old driver. Both finish, with
// their output.
func TestUpgradeWithJobsInFlight(t *testing.T) {
	old := oldHearth(t, beforeVersions)
	sum := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("%x", sha256.Sum256(b))
	}
	cfg := writeConfig(t, "", "")
	// The stage names the agent it runs under: the binary prepare mounted as the container's PID 1.
	src := "j:\n  script:\n    - echo agent-$(sha256sum " + jobcontainer.AgentBinary + " | cut -d' ' -f1)\n"
	for _, tc := range []struct{ name, prepare, run string }{
		{"old agent, new driver", old, parts.Hearth},
		{"new agent, old driver", parts.Hearth, old},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var log syncBuffer
			opts := jobOptions(t, cfg, src, "j", &log)
			opts.Custom.Config.Exec = tc.prepare
			opts.Custom.Prepare.Exec = tc.prepare
			opts.Custom.Run.Exec = tc.run
			opts.Custom.Cleanup.Exec = tc.run
			res := runner.New(opts).Run(context.Background())
			if res.State != "success" || !strings.Contains(log.String(), "\nagent-"+sum(tc.prepare)+"\n") {
				t.Fatalf("%s, want the stage run by the agent %s prepared\n%s", res, tc.prepare, log.String())
			}
		})
	}
}
