package testenv

import (
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ChainExpr is a Nix expression for n derivations, each referencing the one before; it evaluates
// to a list of them. Derivations with the same nonce and index are the same derivation.
func (d *Daemon) ChainExpr(nonce string, n int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "let tools = builtins.storePath %q;\n", d.parts.Tools)
	prev := ""
	for i := 0; i < n; i++ {
		dep := "\"\""
		if prev != "" {
			dep = prev
		}
		fmt.Fprintf(&b, "  p%d = derivation { name = \"chain-%s-%d\"; system = \"x86_64-linux\"; builder = \"${tools}/bin/bash\"; PATH = \"${tools}/bin\"; dep = %s;\n", i, nonce, i, dep)
		fmt.Fprintf(&b, "    args = [ \"-c\" \"mkdir -p $out/bin; echo $dep > $out/dep; echo 'link %d' > $out/bin/data; ln -s data $out/bin/link; touch $out/empty\" ]; };\n", i)
		prev = fmt.Sprintf("p%d", i)
	}
	b.WriteString("in [")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, " p%d", i)
	}
	b.WriteString(" ]\n")
	return b.String()
}

// BuildChain builds ChainExpr(nonce, n) through the daemon, as root (so its post-build-hook queues them), and returns the outputs, the
// first built first.
func (d *Daemon) BuildChain(nonce string, n int) ([]string, error) {
	f := filepath.Join(d.parts.Dir, "chain-"+nonce+".nix")
	if err := os.WriteFile(f, []byte(d.ChainExpr(nonce, n)), 0o644); err != nil {
		return nil, err
	}
	out, err := d.Nix("nix-build", "--no-out-link", f)
	if err != nil {
		return nil, err
	}
	return strings.Fields(out), nil
}

// AddRandom adds a path holding size random bytes in one file (and a small second file) to the
// store, and returns it.
func (d *Daemon) AddRandom(name string, size int64) (string, error) {
	dir := filepath.Join(d.parts.Dir, "random", name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	f, err := os.Create(filepath.Join(dir, "data"))
	if err != nil {
		return "", err
	}
	if _, err := io.CopyN(f, rand.Reader, size); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "name"), []byte(name+"\n"), 0o644); err != nil {
		return "", err
	}
	p, err := d.Nix("nix-store", "--add", dir)
	os.RemoveAll(dir)
	return p, err
}

// Substitute copies path and its closure from substituter into a new, empty store under Dir,
// trusting only publicKey, as a fresh host would; it returns the store's root.
func (d *Daemon) Substitute(substituter, publicKey, path string) (string, error) {
	root, err := os.MkdirTemp(d.parts.Dir, "store-")
	if err != nil {
		return "", err
	}
	cmd := exec.Command("nix-store", "--store", root, "--option", "substituters", substituter,
		"--option", "trusted-public-keys", publicKey, "--option", "require-sigs", "true", "-r", path)
	// A local store of its own: not the daemon, and not the private daemon's config.
	cmd.Env = append(os.Environ(), "NIX_CONF_DIR="+d.NixConfDir, "NIX_REMOTE=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return root, fmt.Errorf("nix-store -r %s from %s: %v: %s", path, substituter, err, out)
	}
	return root, nil
}
