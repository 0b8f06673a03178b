package e2e

import (
	"context"
	"os/exec"
	"strings"
	"testing"

	"github.com/hearth-ci/hearth/internal/testenv"
	"github.com/hearth-ci/hearth/runner"
)

// An image matched by allowed_images is pulled from its registry with the job payload's
// credentials, and the job runs in it with the shared store and the daemon.
func TestAllowedImagePulledWithJobCredentials(t *testing.T) {
	reg, err := testenv.StartRegistry("ci-user", "s3cret", "hearth-image-marker")
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	cfg := writeConfig(t, `allowed_images = ["127.0.0.1:*/ci/**"]`, "")
	src := "j:\n  image: " + reg.Image + "\n  script:\n    - cat /etc/hearth-image\n    - test -d /nix/store && test -S /nix/var/nix/daemon-socket/socket\n    - echo \"remote=$NIX_REMOTE\"\n"
	run := func(password string) (runner.Result, string) {
		var log syncBuffer
		opts := jobOptions(t, cfg, src, "j", &log)
		opts.Credentials = []runner.Credential{{URL: reg.Host, Username: "ci-user", Password: password}}
		res := runner.New(opts).Run(context.Background())
		return res, log.String()
	}

	res, log := run("wrong")
	if res.FailureReason != "script_failure" || !strings.Contains(log, "pull image "+reg.Image) {
		t.Fatalf("with a wrong password: %+v, want a build failure naming the pull\n%s", res, log)
	}
	if _, refused := reg.Counts(); refused == 0 {
		t.Fatal("the registry saw no refused request")
	}

	res, log = run("s3cret")
	if res.State != "success" {
		t.Fatalf("%s\n%s", res, log)
	}
	if !strings.Contains(log, "Pulling image "+reg.Image) || !strings.Contains(log, "\nhearth-image-marker\n") || !strings.Contains(log, "\nremote=daemon\n") {
		t.Fatalf("the job did not run in the pulled image:\n%s", log)
	}
	if authorized, _ := reg.Counts(); authorized == 0 {
		t.Fatal("the registry saw no authorized request")
	}

	// The image is now in containerd's store, but a job the registry refuses still cannot use it:
	// an image a job names is pulled with that job's credentials every time.
	res, log = run("")
	if res.FailureReason != "script_failure" || !strings.Contains(log, "pull image "+reg.Image) {
		t.Fatalf("a job without credentials ran a private image already in the store: %+v\n%s", res, log)
	}
	res, log = run("s3cret")
	if res.State != "success" || !strings.Contains(log, "\nhearth-image-marker\n") {
		t.Fatalf("a later job with credentials: %s\n%s", res, log)
	}
}

// network = "none" gives the job only a loopback of its own; "host" shows it the host's own links,
// the same ones the host sees.
func TestNetworkModes(t *testing.T) {
	hostLinks, err := exec.Command("sh", "-c", "ip -o link show | cut -d' ' -f2 | sort | tr '\\n' ' '").Output()
	if err != nil {
		t.Fatal(err)
	}
	src := "j:\n  script:\n    - ip -o link show | cut -d' ' -f2 | sort | tr '\\n' ' '; echo\n"
	for _, tc := range []struct {
		network, want string
	}{
		{"none", "lo: "},
		{"host", string(hostLinks)},
	} {
		t.Run(tc.network, func(t *testing.T) {
			cfg := writeConfig(t, `network = "`+tc.network+`"`, "")
			res, log := runJob(t, cfg, src, "j")
			if res.State != "success" {
				t.Fatalf("%s\n%s", res, log)
			}
			i := strings.Index(log, "$ ip -o link")
			line := strings.SplitN(log[i:], "\n", 3)[1]
			if line != tc.want {
				t.Fatalf("network %s: the job sees links %q, want %q", tc.network, line, tc.want)
			}
		})
	}
}
