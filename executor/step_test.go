package executor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hearth-ci/hearth/config"
)

// A prepare's error names the step that failed, for the operators' metrics, and says nothing else
// than the error it wraps.
func TestSteps(t *testing.T) {
	cause := errors.New("no bash in the image")
	var je *JobError
	if err := envError(Environment{Untrusted: true}, cause); StepOf(err) != "environment" || !errors.As(err, &je) || err.Error() != cause.Error() {
		t.Errorf("an environment the job chose: step %q, job error %v, text %q", StepOf(err), errors.As(err, &je), err)
	}
	if err := envError(Environment{}, cause); StepOf(err) != "" || errors.As(err, &je) {
		t.Errorf("the runner's own environment: step %q (the caller's step names it), job error %v", StepOf(err), errors.As(err, &je))
	}
	inner := fmt.Errorf("prepare: %w", AtStep("network", cause))
	if got := StepOf(AtStep("containerd", inner)); got != "network" {
		t.Errorf("the outer step %q replaced the inner one", got)
	}
	if AtStep("agent", nil) != nil {
		t.Error("AtStep made an error of nil")
	}
}

// Prepare marks where it stopped: a config that cannot work on this host, a tier whose daemon is
// not there. Neither reaches containerd.
func TestPrepareMarksItsStep(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, stateDir, socket, step, says string
	}{
		{"socket path too long", filepath.Join(dir, strings.Repeat("s", 100)), filepath.Join(dir, "socket"), "config", "longer than a unix socket allows"},
		{"daemon gone", filepath.Join(dir, "state"), filepath.Join(dir, "no-daemon"), "nix-daemon", "is that nix-daemon running?"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config.Default()
			cfg.Jobs.StateDir = tc.stateDir
			cfg.Containerd.Address = filepath.Join(dir, "no-containerd")
			e := New(&cfg)
			defer e.Close()
			err := e.Prepare(context.Background(), JobSpec{ID: "hearth-1-abc", Tier: config.Tier{Name: "protected", DaemonSocket: tc.socket}}, io.Discard)
			if StepOf(err) != tc.step || !strings.Contains(fmt.Sprint(err), tc.says) {
				t.Fatalf("Prepare: %v (step %q), want step %q saying %q", err, StepOf(err), tc.step, tc.says)
			}
		})
	}
}
