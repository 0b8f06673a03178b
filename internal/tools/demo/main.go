// Command demo runs hearth's main job end to end through `hearth exec` on a private containerd and
// nix-daemons (scripts/demo.sh starts it), with two trust tiers. A job on an unprotected ref builds
// a derivation through its tier's daemon; a second run of the same job finds the result in the
// tier's store. Then a job on a protected ref builds a (stand-in) NixOS system in the protected
// tier, and hearth pushes it to the binary cache and deploys it to a server — a Debian host with
// systemd and Nix of its own, booted under systemd-nspawn — which pulls it from the cache.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/hearth-ci/hearth/internal/testenv"
	"github.com/hearth-ci/hearth/internal/testenv/sshtarget"
)

const pipeline = `# The demo pipeline: hearth exec runs the job below as gitlab-runner would.
build:
  variables:
    GREETING: hello from hearth
  script:
    - echo "$GREETING; I am $(id -un) in $PWD on $(hostname)"
    - if touch /nix/store/x 2>/dev/null; then echo "the store is writable!"; exit 1; fi
    - echo "the Nix store is read-only here; builds go through the host's daemon"
    - |
      cat > hello.nix <<'EOF'
      let tools = builtins.storePath "%s"; in
      derivation {
        name = "hearth-demo-%d";
        system = "x86_64-linux";
        builder = "${tools}/bin/bash";
        PATH = "${tools}/bin";
        args = [ "-c" "echo building for 3 seconds; sleep 3; echo 'hello from the Nix store' > $out" ];
      }
      EOF
    - time nix-build --no-out-link hello.nix
    - cat "$(nix-build --no-out-link hello.nix)"
  after_script:
    - echo "after_script runs whatever the script did"

deploy:
  script:
    - |
      cat > system.nix <<'EOF'
%s
      EOF
    - mkdir -p .hearth/deploy
    - nix-build --out-link .hearth/deploy/vps system.nix
    - echo "the job asked for a deploy to vps; hearth does it on the host once this script has succeeded"
`

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run() error {
	fmt.Println("==> starting a private containerd and nix-daemon (sandbox on), building hearth")
	parts, err := testenv.Start(testenv.Options{})
	if err != nil {
		return err
	}
	defer parts.Stop()
	dir := filepath.Join(parts.Dir, "project")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	fmt.Println("==> booting a server to deploy to (Debian with systemd and its own Nix store, in a network namespace)")
	fleet, err := sshtarget.StartFleet(filepath.Join(parts.Dir, "fleet"), 1)
	if err != nil {
		return err
	}
	defer fleet.Stop()
	vps := fleet.Targets()[0]
	// The server pulls from the binary cache the job pushes to (signed; served to it over HTTP).
	cache, err := testenv.ServeCache(fleet, filepath.Join(parts.Dir, "deploy"))
	if err != nil {
		return err
	}
	defer cache.Close()
	// The deploy's GC roots go in the demo's own directory, which goes when the demo ends (nothing
	// collects garbage meanwhile), rather than in the host's /nix/var/nix/gcroots.
	tables := fmt.Sprintf("\n[deploy]\ngc_roots_dir = %q\n", filepath.Join(parts.Dir, "gcroots")) +
		strings.Replace(cache.Tables(fleet, `["1"]`, nil), "[deploy.targets.t1]", "[deploy.targets.vps]", 1)
	// Two trust tiers, as a runner shared by branches should have: jobs on protected refs build
	// with the system's daemon and store, every other job with a daemon and store of its own,
	// which substitutes from the team cache.
	unprotected, err := parts.NewTierDaemon(true)
	if err != nil {
		return err
	}
	defer unprotected.Stop()
	cfg, err := parts.WriteTieredConfig(unprotected, "", "", tables)
	if err != nil {
		return err
	}
	fmt.Printf("==> hearth config (%s):\n%s\n", cfg, parts.TieredConfig(unprotected, "", "", tables))
	system := parts.SystemExpr(fmt.Sprint("demo-", time.Now().Unix()), "ok")
	yml := fmt.Sprintf(pipeline, parts.Tools, time.Now().Unix(), "      "+strings.ReplaceAll(strings.TrimRight(system, "\n"), "\n", "\n      "))
	if err := os.WriteFile(filepath.Join(dir, ".gitlab-ci.yml"), []byte(yml), 0o644); err != nil {
		return err
	}
	// job runs one job of the pipeline with hearth exec, and says how long it took.
	job := func(args ...string) error {
		cmd := exec.Command(parts.Hearth, append([]string{"--config", cfg, "exec"}, args...)...)
		cmd.Dir = dir
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		start := time.Now()
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("hearth exec: %w", err)
		}
		fmt.Printf("==> job finished in %s\n", time.Since(start).Round(time.Millisecond))
		return nil
	}
	for i, title := range []string{"first run: the derivation is built", "second run: the same derivation is already in the store"} {
		fmt.Printf("\n==> hearth exec build (%s)\n", title)
		if err := job("--job-id", fmt.Sprint(1000+i), "build"); err != nil {
			return err
		}
	}
	fmt.Println("\n==> hearth exec --protected deploy (a job on a protected ref that asks for a deploy to vps)")
	if err := job("--protected", "--job-id", "1002", "deploy"); err != nil {
		return err
	}
	fmt.Println("\n==> hearth deploy status vps (the server's generations, and where each came from)")
	cmd := exec.Command(parts.Hearth, "--config", cfg, "deploy", "status", "vps")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("hearth deploy status: %w", err)
	}
	out, err := vps.Run("readlink /run/current-system; cat /var/log/hearth-test-activations")
	if err != nil {
		return err
	}
	fmt.Printf("\n==> on vps: /run/current-system and the activations its switch-to-configuration recorded:\n%s", out)
	return nil
}
