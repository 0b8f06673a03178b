package driver

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/hearth-ci/hearth/config"
	"github.com/hearth-ci/hearth/executor"
)

func TestChooseEnvironment(t *testing.T) {
	cfg, err := config.Parse([]byte(`
[jobs]
allowed_images = ["registry.example.com/ci/*", "docker.io/library/alpine:*"]
[environments.default]
store_path = "/nix/store/00000000000000000000000000000000-env"
[environments.tools]
image = "registry.example.com/base/tools:2"
mounts = ["/etc/ssl/certs:/etc/ssl/certs"]
`))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		image     string
		wantName  string
		wantImage string
		untrusted bool
		refused   bool
	}{
		{"", "default", "", false, false},
		{"default", "default", "", false, false},
		{"tools", "tools", "registry.example.com/base/tools:2", false, false},
		{"registry.example.com/ci/builder:1", "registry.example.com/ci/builder:1", "registry.example.com/ci/builder:1", true, false},
		{"alpine:3.20", "alpine:3.20", "alpine:3.20", true, false}, // matched in its normalized form
		{"registry.example.com/ci/deep/builder:1", "", "", false, true},
		{"registry.example.com/base/tools:2", "", "", false, true}, // only by its environment's name
		{"ubuntu", "", "", false, true},
		{"not a reference!", "", "", false, true},
	}
	for _, tc := range tests {
		env, err := chooseEnvironment(cfg, tc.image)
		if tc.refused {
			if err == nil || classify(err).Kind != BuildFailure || !strings.Contains(err.Error(), "environments: default, tools; images matching: registry.example.com/ci/*, docker.io/library/alpine:*") {
				t.Errorf("%q: error %v, want a build failure listing what is allowed", tc.image, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.image, err)
			continue
		}
		if env.Name != tc.wantName || env.Image != tc.wantImage || env.Untrusted != tc.untrusted {
			t.Errorf("%q: got %+v", tc.image, env)
		}
	}
}

func TestFailureKindsAndExitCodes(t *testing.T) {
	inv := ParseInvocation([]string{"BUILD_FAILURE_EXIT_CODE=11", "SYSTEM_FAILURE_EXIT_CODE=12", "CUSTOM_ENV_CI_JOB_ID=5", "JOB_RESPONSE_FILE=/r"})
	if inv.Custom["CI_JOB_ID"] != "5" || inv.JobResponseFile != "/r" {
		t.Fatalf("invocation %+v", inv)
	}
	for _, tc := range []struct {
		name    string
		err     error
		code    int
		printed bool
	}{
		{"refused by policy", buildFailure("no"), 11, true},
		{"the script's own failure", &Failure{Kind: BuildFailure, Err: errString("exit code 3"), Logged: true}, 11, false},
		{"wrapped, keeps its kind", fmt.Errorf("prepare: %w", buildFailure("no")), 11, true},
		{"an environment the job chose", &executor.JobError{Err: errString("pull image x: denied")}, 11, true},
		{"marked system", &Failure{Kind: SystemFailure, Err: errString("x")}, 12, true},
		{"plain errors are the host's fault", errString("containerd is down"), 12, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var log strings.Builder
			err := Report(&log, "prepare", tc.err)
			var f *Failure
			if !errors.As(err, &f) {
				t.Fatalf("Report returned %T, want *Failure", err)
			}
			if got := inv.ExitCode(f.Kind); got != tc.code {
				t.Errorf("exit code %d, want %d", got, tc.code)
			}
			if printed := log.Len() > 0; printed != tc.printed {
				t.Errorf("printed %q, want printed=%v", log.String(), tc.printed)
			}
			if tc.printed && log.String() != "ERROR: hearth prepare: "+tc.err.Error()+"\n" {
				t.Errorf("printed %q: want one line naming the stage and the error", log.String())
			}
		})
	}
	if err := Report(io.Discard, "run", nil); err != nil {
		t.Fatalf("Report(nil) = %v", err)
	}
}

type errString string

func (e errString) Error() string { return string(e) }
