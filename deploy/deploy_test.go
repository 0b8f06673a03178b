package deploy

import (
	"bytes"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hearth-ci/hearth/nixstore"
)

func TestDiffClosures(t *testing.T) {
	info := func(p string, size uint64) nixstore.PathInfo {
		return nixstore.PathInfo{Path: "/nix/store/" + p, NarSize: size}
	}
	old := []nixstore.PathInfo{info("aaaa-glibc-2.39", 30), info("bbbb-nginx-1.26", 5), info("cccc-system", 1)}
	new := []nixstore.PathInfo{info("aaaa-glibc-2.39", 30), info("dddd-nginx-1.27", 6), info("eeee-system", 1), info("ffff-etc", 2)}
	d := diffClosures(old, new)
	var added, removed []string
	for _, in := range d.Added {
		added = append(added, name(in.Path))
	}
	for _, in := range d.Removed {
		removed = append(removed, name(in.Path))
	}
	if !reflect.DeepEqual(added, []string{"etc", "nginx-1.27", "system"}) || !reflect.DeepEqual(removed, []string{"nginx-1.26", "system"}) {
		t.Fatalf("added %v, removed %v", added, removed)
	}
	if d.AddedBytes != 9 || d.RemovedBytes != 6 || d.OldSize != 36 || d.NewSize != 39 {
		t.Fatalf("sizes %+v", d)
	}
	if got := listed(d.Added, 2); got != "etc, nginx-1.27, and 1 more" {
		t.Fatalf("listed: %q", got)
	}
}

func TestGenerations(t *testing.T) {
	out := "1\t/nix/store/aaaa-nixos-system-a\t1700000000\t\t\n" +
		"2\t/nix/store/bbbb-nixos-system-b\t1700000100\t\t{\"job\":\"77\",\"project\":\"g/p\",\"time\":\"2026-12-01T12:00:00Z\",\"path\":\"/nix/store/bbbb-nixos-system-b\",\"action\":\"switch\"}\n" +
		"3\t/nix/store/cccc-nixos-system-c\t1700000200\tcurrent\t\n"
	out = strings.Replace(out, `"job":"77"`, `"job":"77","url":"https://x/\u001b[2Jjob"`, 1)
	gens, err := parseGenerations(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(gens) != 3 || !gens[2].Current || gens[1].Origin == nil || gens[1].Origin.Job != "77" || gens[0].Origin != nil || !gens[0].Time.Equal(time.Unix(1700000000, 0)) {
		t.Fatalf("parsed %+v", gens)
	}
	if u := gens[1].Origin.URL; u != "https://x/ [2Jjob" {
		t.Fatalf("a control character in a record reached the output: %q", u)
	}
	prev, err := Previous(gens)
	if err != nil || prev.Number != 2 {
		t.Fatalf("previous: %+v, %v", prev, err)
	}
	if _, err := Previous(gens[:1]); err == nil || !strings.Contains(err.Error(), "no current generation") {
		t.Fatalf("previous of a profile without a current generation: %v", err)
	}
	gens[0].Current, gens[2].Current = true, false
	if _, err := Previous(gens); err == nil || !strings.Contains(err.Error(), "nothing to roll back to") {
		t.Fatalf("previous of the oldest: %v", err)
	}
}

func TestShellQuote(t *testing.T) {
	for in, want := range map[string]string{
		"/nix/store/abc-x": "/nix/store/abc-x",
		"":                 "''",
		"a b":              "'a b'",
		"it's; rm -rf /":   `'it'\''s; rm -rf /'`,
		"$(id)":            "'$(id)'",
	} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %s, want %s", in, got, want)
		}
		out, err := exec.Command("sh", "-c", "printf %s "+shellQuote(in)).Output()
		if err != nil || string(out) != in {
			t.Errorf("sh read %s as %q (%v)", shellQuote(in), out, err)
		}
	}
}

// The script hearth runs on targets is valid sh.
func TestTargetScriptParses(t *testing.T) {
	cmd := exec.Command("sh", "-n")
	cmd.Stdin = bytes.NewReader(TargetScript)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sh -n: %v\n%s", err, out)
	}
}

// What send streams is what nix-store --serve --write adds to a store, hash checked by Nix.
func TestServeAddsToAStore(t *testing.T) {
	if testing.Short() || os.Geteuid() != 0 {
		t.Skip("needs root and the host's Nix store")
	}
	if _, err := exec.LookPath("nix-store"); err != nil {
		t.Skip("needs nix-store")
	}
	dir := t.TempDir()
	os.MkdirAll(dir+"/tree/bin", 0o755)
	os.WriteFile(dir+"/tree/bin/run", []byte("#!/bin/sh\necho hi\n"), 0o755)
	os.WriteFile(dir+"/tree/data", bytes.Repeat([]byte("x"), 100001), 0o644)
	os.Symlink("bin/run", dir+"/tree/link")
	os.WriteFile(dir+"/dep", []byte("a dependency"), 0o644)
	env := append(os.Environ(), "NIX_REMOTE=local")
	nixStore := func(args ...string) string {
		t.Helper()
		out, err := (&exec.Cmd{Path: mustLook(t, "nix-store"), Args: append([]string{"nix-store"}, args...), Env: env}).Output()
		if err != nil {
			t.Fatalf("nix-store %v: %v", args, err)
		}
		return strings.TrimSpace(string(out))
	}
	paths := strings.Fields(nixStore("--add", dir+"/tree", dir+"/dep"))
	infos, err := (&nixstore.Store{Env: env}).Info(t.Context(), paths)
	if err != nil {
		t.Fatal(err)
	}
	// The second path "references" the first, so that the order and the references are tested
	// (and so is no longer what its content address says).
	infos[1].References, infos[1].CA = []string{infos[0].Path}, ""
	target := t.TempDir()
	cmd := &exec.Cmd{Path: mustLook(t, "nix-store"), Args: []string{"nix-store", "--store", target, "--serve", "--write"}, Env: env}
	w, _ := cmd.StdinPipe()
	r, _ := cmd.StdoutPipe()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if err := serve(w, r, nixstore.Order([]nixstore.PathInfo{infos[1], infos[0]})); err != nil {
		t.Fatalf("serve: %v\n%s", err, stderr.String())
	}
	w.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("nix-store --serve: %v\n%s", err, stderr.String())
	}
	for _, in := range infos {
		if got := nixStore("--store", target, "--query", "--hash", in.Path); got != in.NarHash && "sha256:"+got != in.NarHash {
			t.Errorf("%s in the target store has hash %s, want %s", in.Path, got, in.NarHash)
		}
	}
	if got := nixStore("--store", target, "--query", "--references", infos[1].Path); got != infos[0].Path {
		t.Errorf("references in the target store: %q", got)
	}
}

func mustLook(t *testing.T, name string) string {
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParseRealise(t *testing.T) {
	out := "missing:\n/nix/store/aaaa-system\n/nix/store/bbbb-etc\nstill-missing:\n/nix/store/bbbb-etc\nnix: these 2 paths will be fetched\nnix: error: don't know how to build these paths:\n"
	missing, still, why := parseRealise(out)
	if len(missing) != 2 || !missing["/nix/store/aaaa-system"] || len(still) != 1 || !still["/nix/store/bbbb-etc"] || why != "error: don't know how to build these paths:" {
		t.Fatalf("missing %v, still %v, why %q", missing, still, why)
	}
	if missing, still, _ := parseRealise("missing:\n"); len(missing)+len(still) != 0 {
		t.Fatalf("nothing missing read as %v, %v", missing, still)
	}
}
