// Command demo runs a job end to end through `hearth exec` on a private containerd and nix-daemon
// (scripts/demo.sh starts it). The job builds a derivation through the daemon; a second run of the
// same job finds the result in the shared store.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/hearth-ci/hearth/internal/testenv"
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
	cfg, err := parts.WriteConfig("", "", "")
	if err != nil {
		return err
	}
	fmt.Printf("==> hearth config (%s):\n%s\n", cfg, parts.Config("", "", ""))
	dir := filepath.Join(parts.Dir, "project")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	yml := fmt.Sprintf(pipeline, parts.Tools, time.Now().Unix())
	if err := os.WriteFile(filepath.Join(dir, ".gitlab-ci.yml"), []byte(yml), 0o644); err != nil {
		return err
	}
	for i, title := range []string{"first run: the derivation is built", "second run: the same derivation is already in the store"} {
		fmt.Printf("\n==> hearth exec build (%s)\n", title)
		cmd := exec.Command(parts.Hearth, "--config", cfg, "exec", "--job-id", fmt.Sprint(1000+i), "build")
		cmd.Dir = dir
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		start := time.Now()
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("hearth exec: %w", err)
		}
		fmt.Printf("==> job finished in %s\n", time.Since(start).Round(time.Millisecond))
	}
	return nil
}
