package driver

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/hearth-ci/hearth/executor"
	"github.com/hearth-ci/hearth/metrics"
)

// Each way a stage ends is recorded with whose fault it was and, for a prepare, what failed.
func TestStageEvent(t *testing.T) {
	hostErr := executor.AtStep("containerd", errors.New("containerd at /run/containerd.sock is unreachable"))
	jobErr := executor.AtStep("environment", &executor.JobError{Err: errors.New("image has no bash")})
	for _, tc := range []struct {
		name, stage   string
		err           error
		cancelled     bool
		fault, reason string
	}{
		{"success", "prepare", nil, false, "", ""},
		{"host fault, step named", "prepare", hostErr, false, metrics.FaultHost, "containerd"},
		{"job fault from the executor", "prepare", jobErr, false, metrics.FaultJob, "environment"},
		{"refused image", "prepare", executor.AtStep("policy", buildFailure("image %q is not allowed", "x")), false, metrics.FaultJob, "policy"},
		{"the innermost step wins", "prepare", executor.AtStep("containerd", fmt.Errorf("wrapped: %w", executor.AtStep("network", errors.New("no bridge")))), false, metrics.FaultHost, "network"},
		{"unmarked", "prepare", errors.New("something else"), false, metrics.FaultHost, "other"},
		{"cancelled", "prepare", executor.AtStep("environment", context.Canceled), true, metrics.FaultCancelled, "cancelled"},
		{"script cancelled", "build_script", errors.New("the agent stopped the script"), true, metrics.FaultCancelled, ""},
		{"script failed", "build_script", &Failure{Kind: BuildFailure, Err: errors.New("exit code 1"), Logged: true}, false, metrics.FaultJob, ""},
		{"cleanup failed", "cleanup", errors.New("containerd down"), false, metrics.FaultHost, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.err
			if err != nil {
				err = Report(discard{}, tc.stage, err) // as runStage records it
			}
			e := StageEvent(tc.stage, 1500*time.Millisecond, err, tc.cancelled)
			want := metrics.Event{Kind: metrics.KindStage, Stage: tc.stage, Seconds: 1.5, Fault: tc.fault, Reason: tc.reason}
			if e != want {
				t.Fatalf("got %+v, want %+v", e, want)
			}
		})
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

type fakeRecorder struct{ events []metrics.Event }

func (f *fakeRecorder) Record(evs ...metrics.Event) { f.events = append(f.events, evs...) }
