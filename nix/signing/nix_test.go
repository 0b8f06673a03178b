package signing_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hearth-ci/hearth/nix"
	"github.com/hearth-ci/hearth/nix/narinfo"
	"github.com/hearth-ci/hearth/nix/signing"
)

// nixEnv runs the Nix command line against throwaway stores under dir, so that the test needs no
// daemon, no /nix and no configuration of the machine it runs on.
type nixEnv struct {
	t   *testing.T
	dir string
	env []string
}

func newNixEnv(t *testing.T) *nixEnv {
	for _, tool := range []string{"nix-store", "nix"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed: %v", tool, err)
		}
	}
	dir := t.TempDir()
	// Nix makes store contents read-only; without write permission back, TempDir's cleanup
	// (which runs after this one) fails for non-root users.
	t.Cleanup(func() {
		_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				_ = os.Chmod(p, 0o755)
			}
			return nil
		})
	})
	for _, sub := range []string{"conf", "home"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "NIX_") {
			env = append(env, kv)
		}
	}
	env = append(env,
		"NIX_CONF_DIR="+filepath.Join(dir, "conf"), // ignore /etc/nix/nix.conf: no substituters or keys from the host
		"HOME="+filepath.Join(dir, "home"),
		"XDG_CACHE_HOME="+filepath.Join(dir, "home", ".cache"), // no narinfo cache shared between runs
	)
	return &nixEnv{t: t, dir: dir, env: env}
}

func (e *nixEnv) run(args ...string) (string, error) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = e.env
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	err := cmd.Run()
	if err != nil {
		return strings.TrimSpace(out.String()), &cmdError{args: args, err: err, stderr: stderr.String()}
	}
	return strings.TrimSpace(out.String()), nil
}

func (e *nixEnv) mustRun(args ...string) string {
	e.t.Helper()
	out, err := e.run(args...)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

type cmdError struct {
	args   []string
	err    error
	stderr string
}

func (c *cmdError) Error() string {
	return strings.Join(c.args, " ") + ": " + c.err.Error() + "\n" + c.stderr
}

// TestNixAcceptsOurKeys checks both directions against the real Nix: a narinfo signed by a key
// from Generate is substituted by Nix with only that key trusted (and refused with another
// key trusted), and Nix signs with our secret key file what our public key verifies.
func TestNixAcceptsOurKeys(t *testing.T) {
	e := newNixEnv(t)
	src := "local?root=" + filepath.Join(e.dir, "src")

	// Random content gives a store path no earlier run has seen.
	payload := filepath.Join(e.dir, "payload")
	if err := os.MkdirAll(payload, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(payload, "f"), []byte(rand.Text()), 0o644); err != nil {
		t.Fatal(err)
	}
	storePath := e.mustRun("nix-store", "--store", src, "--add", payload)

	cacheDir := filepath.Join(e.dir, "cache")
	e.mustRun("nix", "--extra-experimental-features", "nix-command", "copy", "--store", src,
		"--to", "file://"+cacheDir+"?compression=none", storePath)

	hash, err := nix.HashPart(storePath)
	if err != nil {
		t.Fatal(err)
	}
	niPath := filepath.Join(cacheDir, hash+".narinfo")
	f, err := os.Open(niPath)
	if err != nil {
		t.Fatal(err)
	}
	ni, err := narinfo.Parse(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if len(ni.Sigs) != 0 {
		t.Fatalf("nix copy without a key wrote signatures %v", ni.Sigs)
	}
	// Nix trusts content-addressed paths without any signature; dropping CA makes it treat the
	// path as input-addressed, so only the signature can get it accepted.
	ni.CA = ""

	ours, err := signing.Generate("hearth-test-generated-1")
	if err != nil {
		t.Fatal(err)
	}
	fp, err := ni.Fingerprint()
	if err != nil {
		t.Fatal(err)
	}
	ni.Sigs = append(ni.Sigs, ours.Sign(fp))
	if err := os.WriteFile(niPath, []byte(ni.String()), 0o644); err != nil {
		t.Fatal(err)
	}

	substitute := func(store string, trusted signing.PublicKey) error {
		_, err := e.run("nix-store", "--store", "local?root="+filepath.Join(e.dir, store),
			"--option", "substituters", "file://"+cacheDir,
			"--option", "trusted-public-keys", trusted.String(),
			"--option", "require-sigs", "true",
			"-r", storePath)
		return err
	}

	stranger, err := signing.Generate("hearth-test-generated-1") // same name, other key
	if err != nil {
		t.Fatal(err)
	}
	if err := substitute("refused", stranger.Public()); err == nil {
		t.Fatal("Nix substituted the path with only another key trusted; the test proves nothing")
	} else if !strings.Contains(err.Error(), "is not signed by any of the keys") {
		t.Fatalf("Nix refused for an unexpected reason: %v", err)
	}
	if err := substitute("accepted", ours.Public()); err != nil {
		t.Fatalf("Nix refused our signature: %v", err)
	}
	if _, err := os.Stat(filepath.Join(e.dir, "accepted", storePath, "f")); err != nil {
		t.Fatalf("Nix reported success but the path is not in the store: %v", err)
	}

	// The other direction: Nix reads our secret key file and signs with it.
	keyFile := filepath.Join(e.dir, "ours.sk")
	if err := os.WriteFile(keyFile, []byte(ours.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	signedDir := filepath.Join(e.dir, "signed-by-nix")
	e.mustRun("nix", "--extra-experimental-features", "nix-command", "copy", "--store", src,
		"--to", "file://"+signedDir+"?compression=none&secret-key="+keyFile, storePath)
	f, err = os.Open(filepath.Join(signedDir, hash+".narinfo"))
	if err != nil {
		t.Fatal(err)
	}
	bySelf, err := narinfo.Parse(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	fp2, err := bySelf.Fingerprint()
	if err != nil {
		t.Fatal(err)
	}
	if len(bySelf.Sigs) != 1 || !ours.Public().Verify(fp2, bySelf.Sigs[0]) {
		t.Fatalf("Nix's signatures %v with our key do not verify", bySelf.Sigs)
	}
	if bySelf.Sigs[0] != ours.Sign(fp2) {
		t.Fatalf("Nix signed %s, we sign %s", bySelf.Sigs[0], ours.Sign(fp2))
	}
}
