package e2e

import (
	"context"
	"os"
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
