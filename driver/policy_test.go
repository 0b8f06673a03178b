package driver

import (
	"strings"
	"testing"

	"github.com/hearth-ci/hearth/config"
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
			if err == nil || KindOf(err) != BuildFailure || !strings.Contains(err.Error(), "environments: default, tools; images matching: registry.example.com/ci/*, docker.io/library/alpine:*") {
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

func TestExitCodes(t *testing.T) {
	e := ParseEnv([]string{"BUILD_FAILURE_EXIT_CODE=11", "SYSTEM_FAILURE_EXIT_CODE=12", "CUSTOM_ENV_CI_JOB_ID=5", "JOB_RESPONSE_FILE=/r"})
	if e.Custom["CI_JOB_ID"] != "5" || e.JobResponseFile != "/r" {
		t.Fatalf("env %+v", e)
	}
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, 0},
		{buildFailure("no"), 11},
		{&Failure{Kind: SystemFailure, Err: errString("x")}, 12},
		{errString("plain errors are the host's fault"), 12},
	} {
		if got := e.ExitCode(tc.err); got != tc.want {
			t.Errorf("ExitCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}

type errString string

func (e errString) Error() string { return string(e) }
