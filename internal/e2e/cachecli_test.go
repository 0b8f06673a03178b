package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// hearth cache keygen writes a key pair; cache push signs with it and reports progress as plain
// lines when its output is not a terminal; cache verify passes the result and catches a NAR that
// was changed afterwards; the Nix that trusts the public key substitutes what was pushed.
func TestCacheCommands(t *testing.T) {
	dir := t.TempDir()
	out, err := exec.Command(parts.Hearth, "cache", "keygen", "--dir", dir, "hearth-cli-1").CombinedOutput()
	if err != nil {
		t.Fatalf("keygen: %v\n%s", err, out)
	}
	secret, pub := filepath.Join(dir, "hearth-cli-1.secret"), filepath.Join(dir, "hearth-cli-1.public")
	if fi, err := os.Stat(secret); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("secret key file: %v %v", fi, err)
	}
	pubKey, err := os.ReadFile(pub)
	if err != nil {
		t.Fatal(err)
	}
	cacheDir := filepath.Join(dir, "cache")
	cfg := writeCacheConfig(t, "", "", fmt.Sprintf("\n[cache.file]\ndir = %q\nsigning_key_file = %q\n", cacheDir, secret))
	chain, err := daemonOf(t).BuildChain(fmt.Sprint("cli-", time.Now().UnixNano()), 3)
	if err != nil {
		t.Fatal(err)
	}
	top := chain[2]

	out, err = exec.Command(parts.Hearth, "--config", cfg, "cache", "push", "--no-closure", top).CombinedOutput()
	if err != nil || !regexp.MustCompile(`(?m)^1/1 paths, `).Match(out) || !strings.Contains(string(out), "pushed 1 path") {
		t.Fatalf("push --no-closure: %v\n%s", err, out)
	}
	out, err = exec.Command(parts.Hearth, "--config", cfg, "cache", "push", top).CombinedOutput()
	if err != nil || !regexp.MustCompile(`(?m)^2/2 paths, .*/s$`).Match(out) || !strings.Contains(string(out), "pushed 2 paths") || !strings.Contains(string(out), "1 already in the cache") {
		t.Fatalf("push of the closure: %v\n%s", err, out)
	}
	if _, err := parts.Substitute("file://"+cacheDir, strings.TrimSpace(string(pubKey)), top); err != nil {
		t.Fatal(err)
	}

	out, err = exec.Command(parts.Hearth, "--config", cfg, "cache", "verify").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "3 narinfos checked") || !strings.Contains(string(out), "0 bad") {
		t.Fatalf("verify of a sound cache: %v\n%s", err, out)
	}
	// Paths can be named by their hash, their base name or a result link, as people name them.
	link := filepath.Join(t.TempDir(), "result")
	if err := os.Symlink(top, link); err != nil {
		t.Fatal(err)
	}
	hash := strings.SplitN(filepath.Base(chain[0]), "-", 2)[0]
	out, err = exec.Command(parts.Hearth, "--config", cfg, "cache", "verify", hash, filepath.Base(chain[1]), link).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "3 narinfos checked") || !strings.Contains(string(out), "0 bad") {
		t.Fatalf("verify of named paths: %v\n%s", err, out)
	}
	out, err = exec.Command(parts.Hearth, "--config", cfg, "cache", "verify", "not-a-path").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "BAD not-a-path: \"not-a-path\" names no store path") {
		t.Fatalf("verify of a name that is no store path: %v\n%s", err, out)
	}
	// Replace one NAR with another path's: the sizes and hashes no longer match.
	nars, _ := filepath.Glob(filepath.Join(cacheDir, "nar", "*.nar.zst"))
	if len(nars) != 3 {
		t.Fatalf("%d NARs in the cache, want 3", len(nars))
	}
	b, err := os.ReadFile(nars[1])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(nars[0], b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command(parts.Hearth, "--config", cfg, "cache", "verify").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "1 bad") || !strings.Contains(string(out), "BAD ") {
		t.Fatalf("verify did not catch a swapped NAR: %v\n%s", err, out)
	}
	// A wrong public key: every signature fails.
	out, err = exec.Command(parts.Hearth, "--config", cfg, "cache", "verify", "--public-key", "someone-else-1:QbBbnHDtJkm0Q3BkOKZJMnJZOSdKIMXGgQ0PfUjVNpE=").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "3 bad") || !strings.Contains(string(out), "no signature by someone-else-1 verifies") {
		t.Fatalf("verify with another key: %v\n%s", err, out)
	}
}

// The post-build-hook exits 0 at once whatever happens, and says on stderr when it could not queue.
func TestCacheHookNeverFails(t *testing.T) {
	blocker := filepath.Join(t.TempDir(), "not-a-dir")
	if err := os.WriteFile(blocker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	broken := writeCacheConfig(t, "", fmt.Sprintf("queue_dir = %q", blocker), "")
	broken = strings.Replace(readFile(t, broken), fmt.Sprintf("queue_dir = %q\n", daemonOf(t).QueueDir()), "", 1)
	brokenFile := filepath.Join(t.TempDir(), "broken.toml")
	if err := os.WriteFile(brokenFile, []byte(broken), 0o644); err != nil {
		t.Fatal(err)
	}
	good := t.TempDir()
	goodCfg := filepath.Join(t.TempDir(), "good.toml")
	if err := os.WriteFile(goodCfg, []byte(fmt.Sprintf("[cache]\nqueue_dir = %q\n[environments.default]\nstore_path = \"/nix/store/00000000000000000000000000000000-x\"\n", good)), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, cfg, outPaths, drv, stderr string
		entries                          int
	}{
		{"outputs named", goodCfg, "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a /nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b", "/nix/store/cccccccccccccccccccccccccccccccc-c.drv", "", 1},
		{"OUT_PATHS empty (Nix 2.8)", goodCfg, "", "/nix/store/cccccccccccccccccccccccccccccccc-c.drv", "", 2},
		{"queue is a file", brokenFile, "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a", "", "were not queued", 0},
		{"config missing", "/nonexistent/config.toml", "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a", "", "were not queued", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(parts.Hearth, "--config", tc.cfg, "cache", "hook")
			cmd.Env = append(os.Environ(), "OUT_PATHS="+tc.outPaths, "DRV_PATH="+tc.drv)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			start := time.Now()
			if err := cmd.Run(); err != nil {
				t.Fatalf("the hook failed: %v\n%s", err, stderr.String())
			}
			if d := time.Since(start); d > time.Second {
				t.Fatalf("the hook took %s", d)
			}
			if tc.stderr != "" && !strings.Contains(stderr.String(), tc.stderr) {
				t.Fatalf("stderr %q lacks %q", stderr.String(), tc.stderr)
			}
			if tc.entries > 0 {
				m, _ := filepath.Glob(filepath.Join(good, "*.paths"))
				if len(m) != tc.entries {
					t.Fatalf("%d queue entries, want %d", len(m), tc.entries)
				}
			}
		})
	}
	entries, _ := filepath.Glob(filepath.Join(good, "*.paths"))
	var all string
	for _, e := range entries {
		all += readFile(t, e)
	}
	if !strings.Contains(all, "out /nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b\n") || !strings.Contains(all, "drv /nix/store/cccccccccccccccccccccccccccccccc-c.drv\n") {
		t.Fatalf("queue entries:\n%s", all)
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// hearth cache prune removes what was pushed before --older-than and nothing kept needs: a path
// waiting in the queue (its closure with it) stays; a dry run removes nothing; an Attic cache, a
// bad age and a deploy target that cannot say what it runs are refused with a sentence.
func TestCachePruneCommand(t *testing.T) {
	d := daemonOf(t)
	cacheDir := filepath.Join(t.TempDir(), "cache")
	cfg := writeCacheConfig(t, "", "", fmt.Sprintf("\n[cache.file]\ndir = %q\n", cacheDir))
	nonce := fmt.Sprint(time.Now().UnixNano())
	queued, err := d.BuildChain("prune-queued-"+nonce, 2)
	if err != nil {
		t.Fatal(err)
	}
	old, err := d.AddRandom("prune-old-"+nonce, 1024)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := runHearth(cfg, "cache", "push", queued[1], old); err != nil {
		t.Fatalf("push: %v\n%s", err, out)
	}
	// Everything was pushed two days ago, as far as the cache can tell.
	long := time.Now().Add(-48 * time.Hour)
	age := func() {
		files, _ := filepath.Glob(filepath.Join(cacheDir, "*.narinfo"))
		nars, _ := filepath.Glob(filepath.Join(cacheDir, "nar", "*"))
		for _, f := range append(files, nars...) {
			if err := os.Chtimes(f, long, long); err != nil {
				t.Fatal(err)
			}
		}
	}
	age()
	// Then a chain whose top alone is recent: what it references stays, however old.
	recent, err := d.BuildChain("prune-recent-"+nonce, 3)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := runHearth(cfg, "cache", "push", recent[1]); err != nil {
		t.Fatalf("push: %v\n%s", err, out)
	}
	age()
	if out, err := runHearth(cfg, "cache", "push", recent[2]); err != nil {
		t.Fatalf("push: %v\n%s", err, out)
	}
	countNars := func() int {
		nars, _ := filepath.Glob(filepath.Join(cacheDir, "nar", "*"))
		return len(nars)
	}
	// The top of the chain waits in the queue (the watcher has not pushed it again yet).
	hook := exec.Command(parts.Hearth, "--config", cfg, "cache", "hook")
	hook.Env = append(os.Environ(), "OUT_PATHS="+queued[1], "DRV_PATH=")
	if out, err := hook.CombinedOutput(); err != nil {
		t.Fatalf("hook: %v\n%s", err, out)
	}
	narinfo := func(p string) string {
		return filepath.Join(cacheDir, strings.SplitN(filepath.Base(p), "-", 2)[0]+".narinfo")
	}
	exists := func(p string) bool { _, err := os.Stat(narinfo(p)); return err == nil }

	nars := countNars()
	out, err := runHearth(cfg, "cache", "prune", "--older-than", "1d", "--dry-run")
	if err != nil || !strings.Contains(out, "would remove 1 paths and 1 NAR files") || !strings.Contains(out, "5 paths stay") || !exists(old) || countNars() != nars {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	out, err = runHearth(cfg, "cache", "prune", "--older-than", "1d")
	if err != nil || !strings.Contains(out, "removed 1 paths and 1 NAR files") {
		t.Fatalf("prune: %v\n%s", err, out)
	}
	for _, p := range append(append([]string{}, queued...), recent...) {
		if !exists(p) {
			t.Fatalf("the prune removed %s, which a queued or recent path needs", p)
		}
	}
	if exists(old) || countNars() != nars-1 {
		t.Fatalf("the prune kept %s (%d NARs of %d)", old, countNars(), nars)
	}

	for _, tc := range []struct{ name, cfg, age, want string }{
		{"a bad age", cfg, "soon", `--older-than "soon" is not an age such as 90d or 2160h`},
		{"an age under a day", cfg, "1h", "--older-than 1h is less than a day"},
		{"an Attic cache", writeCacheConfig(t, "", `backend = "attic"`, "\n[cache.attic]\nendpoint = \"http://127.0.0.1:1/\"\ncache = \"team\"\ntoken_file = \""+writeFile(t, "token", "x")+"\"\n"),
			"1d", "collects its own garbage"},
		{"a target that does not answer", writeCacheConfig(t, "", "", fmt.Sprintf("\n[cache.file]\ndir = %q\n\n[deploy.targets.gone]\nhost = \"127.0.0.1\"\nport = 1\nknown_hosts_file = %q\nidentity_file = %q\nprojects = [\"7\"]\n",
			cacheDir, writeFile(t, "known_hosts", ""), writeFile(t, "id", "x"))), "1d", "ask gone what it runs, whose closure the prune keeps"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runHearth(tc.cfg, "cache", "prune", "--older-than", tc.age)
			if err == nil || !strings.Contains(out, tc.want) {
				t.Fatalf("%s: %v\n%s", tc.name, err, out)
			}
		})
	}
}

// writeFile writes content to a new file named name in a directory of t's own, and returns its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
