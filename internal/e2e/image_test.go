package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hearth-ci/hearth/internal/testenv"
	"github.com/hearth-ci/hearth/internal/testenv/gitlab"
	"github.com/hearth-ci/hearth/runner"
)

// The job payload's registry login, as GitLab sends it: gitlab-ci-token and the job's token.
const jobToken = "glcbt-job-token-of-ci-tools"

func startRegistry(t *testing.T) *testenv.Registry {
	t.Helper()
	reg, err := testenv.StartRegistry(t.TempDir(), "hearth-image-marker",
		gitlab.Login{Username: "gitlab-ci-token", Password: jobToken, Repos: map[string][]string{"ci/*": {"pull"}}},
		// A job of another project: a login the registry knows, without rights on ci/tools.
		gitlab.Login{Username: "gitlab-ci-token", Password: "glcbt-job-token-of-other", Repos: map[string][]string{"other/*": {"pull"}}},
	)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reg.Close)
	return reg
}

// An image matched by allowed_images is pulled from a registry with token authentication, with the
// job payload's credentials, and the job runs in it with the shared store and the daemon. A wrong
// token, another project's token and no token are each refused, also once the image is on the host.
func TestAllowedImagePulledWithJobCredentials(t *testing.T) {
	reg := startRegistry(t)
	cfg := writeConfig(t, `allowed_images = ["127.0.0.1:*/ci/**"]`, "")
	src := "j:\n  image: " + reg.Image + "\n  script:\n    - cat /etc/hearth-image\n    - test -d /nix/store && test -S /nix/var/nix/daemon-socket/socket\n    - echo \"remote=$NIX_REMOTE\"\n"
	run := func(password string) (runner.Result, string) {
		var log syncBuffer
		opts := jobOptions(t, cfg, src, "j", &log)
		if password != "" {
			opts.Credentials = []runner.Credential{{URL: reg.Host, Username: "gitlab-ci-token", Password: password}}
		}
		res := runner.New(opts).Run(context.Background())
		return res, log.String()
	}
	refused := func(password, why string) {
		t.Helper()
		res, log := run(password)
		if res.FailureReason != "script_failure" || !strings.Contains(log, "pull image "+reg.Image) || strings.Contains(log, "\nhearth-image-marker\n") {
			t.Fatalf("%s: %+v, want a build failure naming the pull\n%s", why, res, log)
		}
		i := strings.Index(log, "pull image "+reg.Image)
		t.Logf("%s: %s", why, strings.SplitN(log[i:], "\n", 2)[0])
	}

	refused("wrong", "a wrong token")

	if _, n := reg.Issuer.Counts(); n == 0 {
		t.Fatal("the issuer refused no credentials")
	}
	refused("glcbt-job-token-of-other", "another project's token")

	res, log := run(jobToken)
	if res.State != "success" {
		t.Fatalf("%s\n%s", res, log)
	}
	if !strings.Contains(log, "Pulling image "+reg.Image) || !strings.Contains(log, "\nhearth-image-marker\n") || !strings.Contains(log, "\nremote=daemon\n") {
		t.Fatalf("the job did not run in the pulled image:\n%s", log)
	}

	// The image is now in containerd's store, but a job the registry refuses still cannot use it:
	// an image a job names is pulled with that job's credentials every time.
	refused("", "no token, the image on the host")
	refused("glcbt-job-token-of-other", "another project's token, the image on the host")
	if res, log := run(jobToken); res.State != "success" || !strings.Contains(log, "\nhearth-image-marker\n") {
		t.Fatalf("a later job with credentials: %s\n%s", res, log)
	}
}

// A configured environment made of an image, with a mount: the job runs in the image, sees the
// host directory read-only where the config puts it, and still has the store and the daemon. The
// environment is named, not the image: no allowed_images entry is needed.
func TestConfiguredImageEnvironment(t *testing.T) {
	reg := startRegistry(t)
	shared := t.TempDir()
	if err := os.WriteFile(filepath.Join(shared, "motd"), []byte("shared-from-the-host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := writeConfig(t, "", fmt.Sprintf("\n[environments.tools]\nimage = %q\nmounts = [\"%s:/srv/shared\"]\n", reg.Image, shared))
	src := `j:
  image: tools
  script:
    - cat /etc/hearth-image /srv/shared/motd
    - if touch /srv/shared/written 2>/dev/null; then echo MOUNT-WRITABLE; exit 1; fi
    - test -S /nix/var/nix/daemon-socket/socket && echo daemon-here
`
	var log syncBuffer
	opts := jobOptions(t, cfg, src, "j", &log)
	opts.Credentials = []runner.Credential{{URL: reg.Host, Username: "gitlab-ci-token", Password: jobToken}}
	res := runner.New(opts).Run(context.Background())
	if res.State != "success" {
		t.Fatalf("%s\n%s", res, log.String())
	}
	for _, want := range []string{"Using hearth environment tools (image " + reg.Image + ")", "\nhearth-image-marker\nshared-from-the-host\n", "\ndaemon-here\n"} {
		if !strings.Contains(log.String(), want) {
			t.Fatalf("the job log lacks %q:\n%s", want, log.String())
		}
	}
	if _, err := os.Stat(filepath.Join(shared, "written")); err == nil {
		t.Fatal("the job wrote into the host directory")
	}
}

// network = "none" gives the job only a loopback of its own; "bridge" a loopback and its end of
// the bridge; "host" shows it the host's own links, the same ones the host sees.
func TestNetworkModes(t *testing.T) {
	// Names only: busybox and iproute2 write a veth's peer (the "@…" part) differently.
	const links = "ip -o link show | cut -d' ' -f2 | cut -d@ -f1 | sed 's/:*$/:/' | sort | tr '\\n' ' '"
	src := "j:\n  script:\n    - " + links + "; echo\n"
	for _, network := range []string{"none", "bridge", "host"} {
		t.Run(network, func(t *testing.T) {
			cfg := writeConfig(t, `network = "`+network+`"`, "")
			res, log := runJob(t, cfg, src, "j")
			if res.State != "success" {
				t.Fatalf("%s\n%s", res, log)
			}
			want := "lo: "
			if network == "bridge" {
				want = "eth0: lo: "
			}
			if network == "host" {
				// Read just after the job, so that the links the host has now are compared.
				host, err := exec.Command("sh", "-c", links).Output()
				if err != nil {
					t.Fatal(err)
				}
				want = string(host)
			}
			i := strings.Index(log, "$ ip -o link")
			line := strings.SplitN(log[i:], "\n", 3)[1]
			if line != want {
				t.Fatalf("network %s: the job sees links %q, want %q", network, line, want)
			}
		})
	}
}

// An existing pipeline's `image: nixos/nix:latest`, mapped to a store-path environment (as the
// NixOS module maps the image names Nix pipelines use to its ci-env): the job runs at once on the
// store, with nothing pulled, and finds the environment's certificates where TLS clients look
// (curl and OpenSSL under nixpkgs' name, ca-bundle.crt; Go and Debian's under ca-certificates.crt).
func TestNixImageNameRunsOnTheStore(t *testing.T) {
	cfg := writeConfig(t, "", fmt.Sprintf("\n[environments.\"nixos/nix:latest\"]\nstore_path = %q\n", parts.Environment))
	src := `j:
  image: nixos/nix:latest
  script:
    - grep -q 'BEGIN CERTIFICATE' /etc/ssl/certs/ca-bundle.crt && grep -q 'BEGIN CERTIFICATE' /etc/ssl/certs/ca-certificates.crt && echo certs-here
    - nix-store --version
`
	res, log := runJob(t, cfg, src, "j")
	if res.State != "success" {
		t.Fatalf("%s\n%s", res, log)
	}
	for _, want := range []string{"Using hearth environment nixos/nix:latest (" + parts.Environment + ")", "\ncerts-here\n", "nix-store (Nix) "} {
		if !strings.Contains(log, want) {
			t.Fatalf("the job log lacks %q:\n%s", want, log)
		}
	}
	if strings.Contains(log, "Pulling") || strings.Contains(log, "pull") {
		t.Fatalf("the job pulled an image:\n%s", log)
	}
}
