package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// hearth config check accepts a valid file and names the key and line of a bad one.
func TestConfigCheck(t *testing.T) {
	good := writeConfig(t, "", "")
	out, err := exec.Command(parts.Hearth, "config", "check", good).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "is valid") {
		t.Fatalf("valid config: %v\n%s", err, out)
	}
	bad := filepath.Join(t.TempDir(), "bad.toml")
	src := strings.Replace(parts.Config("", "", ""), "[jobs]\n", "[jobs]\nnetwrok = \"none\"\n", 1)
	if err := os.WriteFile(bad, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	line := 1 + strings.Count(src[:strings.Index(src, "netwrok")], "\n")
	cmd := exec.Command(parts.Hearth, "config", "check")
	cmd.Env = append(os.Environ(), "HEARTH_CONFIG="+bad)
	out, err = cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("a config with an unknown key passed:\n%s", out)
	}
	if want := fmt.Sprintf(`line %d: unknown key "jobs.netwrok"`, line); !strings.Contains(string(out), want) {
		t.Fatalf("output lacks %q:\n%s", want, out)
	}
}
