// Package nixos holds the NixOS modules and the flake's tests: every .nix file parses, the flake's
// vendorHash is what `go mod vendor` makes, and (where a nixpkgs lib is at hand) the modules
// evaluate, assert and render a config hearth accepts.
package nixos

import (
	"crypto/sha256"
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"testing"

	"github.com/hearth-ci/hearth/nix/nar"
)

// The flake's vendorHash is the hash of the NAR of what `go mod vendor` makes: buildGoModule's
// goModules derivation runs that and copies vendor/ to its output, a fixed-output derivation
// whose hash this is. That the two agree is inferred from buildGoModule's source, not checked
// against a build here (there is no nixpkgs on these machines).
func TestVendorHash(t *testing.T) {
	root := moduleRoot(t)
	flake, err := os.ReadFile(filepath.Join(root, "flake.nix"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*vendorHash = "(sha256-[A-Za-z0-9+/=]+)";`).FindSubmatch(flake)
	if m == nil {
		t.Fatal(`flake.nix has no line vendorHash = "sha256-…";`)
	}
	vendor := filepath.Join(t.TempDir(), "vendor")
	cmd := exec.Command("go", "mod", "vendor", "-o", vendor)
	cmd.Dir = root
	// As buildGoModule's goModules derivation runs it (pkgs/build-support/go/module.nix): modules
	// from the proxy (here, or this machine's module cache), no toolchain switch, no GOFLAGS.
	cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local", "GOFLAGS=", "GO111MODULE=on")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go mod vendor: %v\n%s", err, out)
	}
	h := sha256.New()
	if err := nar.Dump(h, vendor); err != nil {
		t.Fatal(err)
	}
	want := "sha256-" + base64.StdEncoding.EncodeToString(h.Sum(nil))
	if string(m[1]) != want {
		t.Fatalf("flake.nix says vendorHash = %q, but go.mod and go.sum vendor to %q: put that in flake.nix", m[1], want)
	}
}

func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		t.Fatalf("no go.mod above the nixos directory: %v", err)
	}
	return dir
}

// Every .nix file of the checkout parses (nix-instantiate --parse needs nothing but Nix). CI runs
// this; the evaluation tests need a nixpkgs lib.
func TestNixFilesParse(t *testing.T) {
	root := moduleRoot(t)
	var files []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if !d.IsDir() && filepath.Ext(p) == ".nix" {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"flake.nix", "nixos/runner.nix", "nixos/attic-server.nix", "nixos/deploy-target.nix", "nixos/tests/vm.nix"} {
		if !slices.Contains(files, filepath.Join(root, want)) {
			t.Errorf("%s is missing", want)
		}
	}
	for _, f := range files {
		if out, err := exec.Command("nix-instantiate", "--parse", f).CombinedOutput(); err != nil {
			t.Errorf("%s does not parse: %v\n%s", f, err, out)
		}
	}
}
