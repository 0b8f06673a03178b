package e2e

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-ci/hearth/internal/testenv"
	"github.com/hearth-ci/hearth/internal/testenv/atticd"
	"github.com/hearth-ci/hearth/nix/signing"
	"github.com/hearth-ci/hearth/runner"
)

var (
	s3server *testenv.S3
	s3once   sync.Once
	s3err    error
	buckets  int
)

// s3Bucket starts the S3 server on first use and makes a new bucket; it returns the [cache.s3]
// table for it and the bucket's directory (a file:// cache Nix can read).
func s3Bucket(t *testing.T, signingKey string) (string, string) {
	t.Helper()
	s3once.Do(func() { s3server, s3err = testenv.StartS3(filepath.Join(parts.Dir, "s3")) })
	if s3err != nil {
		t.Fatal(s3err)
	}
	buckets++
	name := fmt.Sprintf("e2e-%d", buckets)
	dir, err := s3server.CreateBucket(name)
	if err != nil {
		t.Fatal(err)
	}
	id, secret, err := s3server.WriteCredentials(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("\n[cache.s3]\nbucket = %q\nendpoint = %q\naccess_key_id_file = %q\nsecret_access_key_file = %q\nsigning_key_file = %q\n",
		name, s3server.URL, id, secret, signingKey), dir
}

// atticCache starts an Attic server, stopped when t ends, with a public cache named name; it
// returns the server, the cache's public key and a file holding a token that may push and pull.
func atticCache(t *testing.T, name string) (*atticd.Server, string, string) {
	t.Helper()
	srv, err := atticd.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	pub, err := srv.CreateCache(name, true)
	if err != nil {
		t.Fatal(err)
	}
	token := filepath.Join(t.TempDir(), "attic-token")
	if err := os.WriteFile(token, []byte(srv.Token(atticd.Permissions{Pattern: name, Pull: true, Push: true})), 0o600); err != nil {
		t.Fatal(err)
	}
	return srv, pub, token
}

// keyPair writes a new signing key and returns its file and public key.
func keyPair(t *testing.T, name string) (string, string) {
	t.Helper()
	k, err := signing.Generate(name)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), name+".secret")
	if err := os.WriteFile(f, []byte(k.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f, k.Public().String()
}

// buildJob is a job that builds a chain of n derivations and prints their outputs.
func buildJob(nonce string, n int, extra string) string {
	return fmt.Sprintf(`build:
  script:
    - |
      cat > chain.nix <<'EOF'
%s
      EOF
    - nix-build --no-out-link %s chain.nix
%s`, indent(parts.ChainExpr(nonce, n), "      "), extra, "")
}

var storePathRE = regexp.MustCompile(`/nix/store/[0-9a-z]{32}-chain-[0-9a-z-]+`)

// builtPaths are the chain outputs a job log names on lines of their own (nix-build's output).
func builtPaths(log, nonce string) []string {
	var out []string
	for _, line := range strings.Split(log, "\n") {
		if storePathRE.MatchString(line) && strings.TrimSpace(line) == storePathRE.FindString(line) && strings.Contains(line, nonce) {
			out = append(out, strings.TrimSpace(line))
		}
	}
	return out
}

// A job builds paths and does nothing about caching; afterwards real Nix, with an empty store
// that trusts only the cache's key, substitutes every one of them from each backend.
func TestJobOutputsReachEachCache(t *testing.T) {
	type backend struct {
		name                          string
		cacheKeys, tables             string
		substituter, publicKey, shows string
	}
	fileKey, filePub := keyPair(t, "hearth-e2e-file-1")
	fileDir := filepath.Join(t.TempDir(), "file-cache")
	s3Key, s3Pub := keyPair(t, "hearth-e2e-s3-1")
	s3Table, s3Dir := s3Bucket(t, s3Key)
	srv, atticPub, token := atticCache(t, "ci")
	for _, b := range []backend{
		{"file", `backend = "file"`, fmt.Sprintf("\n[cache.file]\ndir = %q\nsigning_key_file = %q\n", fileDir, fileKey), "file://" + fileDir, filePub, "file://"},
		{"s3", `backend = "s3"`, s3Table, "file://" + s3Dir, s3Pub, "s3://"},
		{"attic", `backend = "attic"`, fmt.Sprintf("\n[cache.attic]\nendpoint = %q\ncache = \"ci\"\ntoken_file = %q\n", srv.URL, token), srv.URL + "ci", atticPub, "attic "},
	} {
		t.Run(b.name, func(t *testing.T) {
			cfg := writeCacheConfig(t, "", b.cacheKeys, b.tables)
			nonce := fmt.Sprintf("reach-%s-%d", b.name, time.Now().UnixNano())
			res, log := runJob(t, cfg, buildJob(nonce, 2, ""), "build")
			if res.State != "success" {
				t.Fatalf("%s\n%s", res, log)
			}
			built := builtPaths(log, nonce)
			if len(built) != 2 {
				t.Fatalf("the job built %v, want 2 paths:\n%s", built, log)
			}
			if !strings.Contains(log, "Pushing what the job built to "+b.shows) {
				t.Fatalf("no push section in the job log:\n%s", log)
			}
			for _, p := range built {
				if !strings.Contains(log, "pushed "+p+" (") {
					t.Fatalf("the job log does not show %s pushed:\n%s", p, log)
				}
				root, err := parts.Substitute(b.substituter, b.publicKey, p)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := os.Stat(root + p + "/bin/data"); err != nil {
					t.Fatalf("substituted %s is incomplete: %v", p, err)
				}
			}
		})
	}
}

// Paths the daemon substituted from the cache are not pushed again: only what the job built is.
func TestSubstitutedPathsNotPushedAgain(t *testing.T) {
	cfg := writeCacheConfig(t, "", `backend = "file"`, fmt.Sprintf("\n[cache.file]\ndir = %q\nsigning_key_file = %q\n", parts.TeamCache, parts.TeamKey))
	nonce := fmt.Sprint("subst-", time.Now().UnixNano())
	// Two paths built on the host and pushed, then deleted from the store.
	d := daemonOf(t)
	first, err := d.BuildChain(nonce, 2)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := runHearth(cfg, "cache", "push", first[1]); err != nil {
		t.Fatalf("push: %v\n%s", err, out)
	}
	// Pushed by hand; a drain would have dropped their queue entries, and the GC roots that
	// keep queued paths alive with them.
	unqueue(t, d)
	if _, err := d.Nix("nix-store", "--delete", first[1], first[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(first[0]); err == nil {
		t.Fatal("the paths are still in the store")
	}
	// The job builds a third path on top: the daemon substitutes the first two from the cache.
	res, log := runJob(t, cfg, buildJob(nonce, 3, "--option substituters file://"+parts.TeamCache), "build")
	if res.State != "success" {
		t.Fatalf("%s\n%s", res, log)
	}
	for _, p := range first {
		if !strings.Contains(log, "copying path '"+p+"' from 'file://") {
			t.Fatalf("the daemon did not substitute %s:\n%s", p, log)
		}
		if strings.Contains(log, "pushed "+p+" (") {
			t.Fatalf("%s was substituted and then pushed again:\n%s", p, log)
		}
	}
	pushed := regexp.MustCompile(`\npushed (/nix/store/\S+) \(`).FindAllStringSubmatch(log, -1)
	if len(pushed) != 1 || !strings.HasSuffix(pushed[0][1], nonce+"-2") || !strings.Contains(log, "Pushed 1 path ") {
		t.Fatalf("the job should have pushed exactly the path it built, %s-2 (pushed %v):\n%s", nonce, pushed, log)
	}
}

// unqueue empties the daemon's queue and removes the GC roots of what it held.
func unqueue(t *testing.T, d *testenv.Daemon) {
	t.Helper()
	entries, _ := filepath.Glob(filepath.Join(d.QueueDir(), "*.paths"))
	for _, e := range entries {
		name := strings.TrimSuffix(filepath.Base(e), ".paths")
		if err := os.RemoveAll(filepath.Join(parts.GCRoots, "queue", name)); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(e); err != nil {
			t.Fatal(err)
		}
	}
}

// runHearth runs the hearth binary with a config.
func runHearth(cfg string, args ...string) (string, error) {
	cmd := execCommand(parts.Hearth, append([]string{"--config", cfg}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// A job cannot read the cache's token, signing key or S3 credentials: they stay on the host, and
// out of the job's reach while the driver holds them to push. A probe the job leaves running looks
// for them, in files and in every process it can see, while the S3 server holds the push open.
func TestJobCannotReadCacheSecrets(t *testing.T) {
	keyFile, _ := keyPair(t, "hearth-e2e-secret-1")
	key, _ := os.ReadFile(keyFile)
	s3Table, _ := s3Bucket(t, keyFile)
	creds := regexp.MustCompile(`(access_key_id_file|secret_access_key_file) = "([^"]+)"`).FindAllStringSubmatch(s3Table, -1)
	token := filepath.Join(t.TempDir(), "attic-token")
	if err := os.WriteFile(token, []byte("attic-token-marker-0123456789"), 0o600); err != nil {
		t.Fatal(err)
	}
	secrets := map[string]string{keyFile: strings.TrimSpace(strings.SplitN(string(key), ":", 2)[1])[:24], token: "attic-token-marker"}
	for _, c := range creds {
		b, _ := os.ReadFile(c[2])
		secrets[c[2]] = strings.TrimSpace(string(b))
	}
	tables := s3Table + fmt.Sprintf("\n[cache.attic]\nendpoint = \"http://127.0.0.1:1/\"\ncache = \"x\"\ntoken_file = %q\n", token)
	// The control's environment leaks a readable copy of the signing key into the job, so the
	// probe can be seen to find a secret where it can reach one.
	leaked := filepath.Join(t.TempDir(), "leaked")
	if err := os.WriteFile(leaked, key, 0o644); err != nil {
		t.Fatal(err)
	}
	tables += fmt.Sprintf("\n[environments.leaky]\nstore_path = %q\nmounts = [\"%s:/etc/leaked\"]\n", parts.Environment, leaked)
	cfg := writeCacheConfig(t, "", `backend = "s3"`, tables)
	log := probeSecrets(t, cfg, secrets, "")
	if regexp.MustCompile(`SECRET-[A-Z-]+`).MatchString(log) || !strings.Contains(log, "\nprobe-done") {
		t.Fatalf("the job could read a cache secret, or the probe did not run:\n%s", log)
	}
	log = probeSecrets(t, cfg, secrets, "leaky")
	if !strings.Contains(log, "SECRET-FOUND") {
		t.Fatalf("control: the probe did not find the key mounted into the job:\n%s", log)
	}
}

// secretProbe is the end of a job's script that leaves a probe running, which looks for the
// secrets (file → content) wherever a job can look, and an after_script that fails the job if it
// found one. It returns those lines and the probe's log file, in the project dir.
func secretProbe(secrets map[string]string, nonce string) (lines, probeLog string) {
	// The probe carries the secrets only base64-encoded, and keeps their decoded form under
	// /dev/shm, where it does not search: it finds them only where hearth would have let them be.
	var patterns strings.Builder
	var files []string
	for file, marker := range secrets {
		patterns.WriteString(marker + "\n")
		files = append(files, file)
	}
	loop := fmt.Sprintf(`mkdir -p /dev/shm/probe
echo %s | base64 -d > /dev/shm/probe/patterns
n=0
while :; do
  n=$((n+1))
  for f in %s; do if cat "$f" >/dev/null 2>&1; then echo "SECRET-FILE-READABLE $f"; fi; done
  if grep -rqsF -f /dev/shm/probe/patterns /builds /cache /tmp /root /etc /.hearth /nix/var /run; then echo SECRET-FOUND; fi
  for p in /proc/[0-9]*; do cat $p/environ $p/cmdline 2>/dev/null; done | grep -qaF -f /dev/shm/probe/patterns && echo SECRET-IN-PROCESS
  echo "iteration $n"
  sleep 0.05
done
`, base64.StdEncoding.EncodeToString([]byte(patterns.String())), strings.Join(files, " "))
	probeLog = "probe-" + nonce + ".log"
	return fmt.Sprintf(`    - echo %s | base64 -d > /dev/shm/loop.sh
    - setsid bash /dev/shm/loop.sh > %s 2>&1 < /dev/null &
  after_script:
    - pkill -f /dev/shm/loop.sh || true
    - if grep SECRET- %s; then exit 1; fi
    - echo probe-done
`, base64.StdEncoding.EncodeToString([]byte(loop)), probeLog, probeLog), probeLog
}

// probeSecrets runs a job in environment image (the default when empty) that builds a path and
// leaves a probe running, which looks for the secrets (file → content) while the S3 server holds
// the driver's push open. It returns the job log, in which the probe's findings appear.
func probeSecrets(t *testing.T, cfg string, secrets map[string]string, image string) string {
	t.Helper()
	nonce := fmt.Sprint("secrets-", time.Now().UnixNano())
	probe, probeLog := secretProbe(secrets, nonce)
	src := buildJob(nonce, 1, "") + probe
	if image != "" {
		src += "  image: " + image + "\n"
	}

	// The narinfo is the last thing a push sends: hold it until the probe has looked around a few
	// times while the driver is in the middle of the push.
	arrived, release := s3server.Hold(func(r *http.Request) bool {
		return r.Method == http.MethodPut && strings.HasSuffix(r.URL.Path, ".narinfo")
	})
	defer release()
	type result struct {
		res runner.Result
		log string
	}
	var log syncBuffer
	opts := jobOptions(t, cfg, src, "build", &log)
	done := make(chan result, 1)
	go func() {
		res := runner.New(opts).Run(context.Background())
		done <- result{res, log.String()}
	}()
	// However this test ends, the job is let go and waited for, so that nothing of it reaches
	// later tests.
	finished := false
	defer func() {
		release()
		if !finished {
			<-done
		}
	}()
	iterations := func() int {
		logs, _ := filepath.Glob(filepath.Join(parts.BuildsRoot(), "*", "7", "*", "group", "project", probeLog))
		if len(logs) != 1 {
			return 0
		}
		b, _ := os.ReadFile(logs[0])
		return strings.Count(string(b), "iteration ")
	}
	select {
	case <-arrived:
	case r := <-done:
		finished = true
		t.Fatalf("the job ended before its push reached the narinfo: %s\n%s", r.res, r.log)
	case <-time.After(2 * time.Minute):
		t.Fatal("the push never reached the narinfo")
	}
	during := iterations()
	waitFor(t, "the probe to look three times during the push", 30*time.Second, func() bool { return iterations() >= during+3 })
	release()
	r := <-done
	finished = true
	// after_script's failure (a secret found) does not fail the job: the log says what was found.
	if r.res.State != "success" || !strings.Contains(r.log, "Pushing what the job built to s3://") {
		t.Fatalf("%s\n%s", r.res, r.log)
	}
	return r.log
}

// queueEntries lists the entries of the queue of t's daemon.
func queueEntries(t *testing.T) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(daemonOf(t).QueueDir(), "*.paths"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// A broken cache setup is a clear warning in the job log (or, when the cache is required, a system
// failure), and nothing is dropped from the queue.
func TestCacheErrorsKeepTheQueue(t *testing.T) {
	srv, err := atticd.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if _, err := srv.CreateCache("ci", false); err != nil {
		t.Fatal(err)
	}
	wrongToken := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(wrongToken, []byte("not-a-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	noBucket, _ := s3Bucket(t, "")
	noBucket = strings.Replace(noBucket, `bucket = "e2e-`, `bucket = "missing-`, 1)
	tests := []struct {
		name, cacheKeys, tables, want string
	}{
		{"wrong token", `backend = "attic"`, fmt.Sprintf("\n[cache.attic]\nendpoint = %q\ncache = \"ci\"\ntoken_file = %q\n", srv.URL, wrongToken),
			"refused the token in " + wrongToken + " (401)"},
		{"missing bucket", `backend = "s3"`, noBucket, `bucket "missing-`},
		{"unreadable key file", "", fmt.Sprintf("\n[cache.file]\ndir = %q\nsigning_key_file = \"/nonexistent/hearth.secret\"\n", t.TempDir()),
			"/nonexistent/hearth.secret"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := writeCacheConfig(t, "", tc.cacheKeys, tc.tables)
			nonce := fmt.Sprintf("broken-%d", time.Now().UnixNano())
			res, log := runJob(t, cfg, buildJob(nonce, 1, ""), "build")
			if res.State != "success" {
				t.Fatalf("a push failure that is not required failed the job: %s\n%s", res, log)
			}
			if !strings.Contains(log, "WARNING: the binary cache push failed") || !strings.Contains(log, tc.want) {
				t.Fatalf("the job log lacks a warning saying %q:\n%s", tc.want, log)
			}
			built := builtPaths(log, nonce)
			if len(built) != 1 || !queued(t, built[0]) {
				t.Fatalf("the built path %v is no longer queued", built)
			}
			// Required: the same failure fails the job, as the runner's fault.
			cfg = writeCacheConfig(t, "", tc.cacheKeys+"\nrequired = true", tc.tables)
			res, log = runJob(t, cfg, "j:\n  script: [\"true\"]\n", "j")
			if res.FailureReason != "runner_system_failure" || !strings.Contains(log, tc.want) {
				t.Fatalf("a required push failure: %+v\n%s", res, log)
			}
		})
	}
	t.Run("corrupt queue entry", func(t *testing.T) {
		bad := filepath.Join(daemonOf(t).QueueDir(), "0-corrupt.paths")
		if err := os.MkdirAll(filepath.Dir(bad), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(bad, []byte("hearth-queue 1\nout not-a-path\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(bad)
		cfg := writeCacheConfig(t, "", "", "")
		res, log := runJob(t, cfg, "j:\n  script: [\"true\"]\n", "j")
		if res.State != "success" || !strings.Contains(log, "queue entry "+bad+" is corrupt: line 2") {
			t.Fatalf("%s\n%s", res, log)
		}
		if _, err := os.Stat(bad); err != nil {
			t.Fatal("the corrupt entry was dropped from the queue")
		}
	})
}

// queued reports whether a queue entry names path (or the derivation that built it).
func queued(t *testing.T, path string) bool {
	t.Helper()
	drv, err := parts.Nix("nix-store", "--query", "--deriver", path)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range queueEntries(t) {
		b, _ := os.ReadFile(e)
		if strings.Contains(string(b), path) || strings.Contains(string(b), drv) {
			return true
		}
	}
	return false
}

// push = "protected" reads the job payload: a job variable claiming a protected ref changes nothing.
func TestPushOnlyFromProtectedRefs(t *testing.T) {
	dir := t.TempDir()
	cfg := writeCacheConfig(t, "", `push = "protected"`, fmt.Sprintf("\n[cache.file]\ndir = %q\n", dir))
	for _, protected := range []bool{false, true} {
		nonce := fmt.Sprintf("protected-%v-%d", protected, time.Now().UnixNano())
		var log syncBuffer
		src := buildJob(nonce, 1, "") + "  variables:\n    CI_COMMIT_REF_PROTECTED: \"true\"\n"
		opts := jobOptions(t, cfg, src, "build", &log)
		opts.Protected = protected
		res := runner.New(opts).Run(context.Background())
		if res.State != "success" {
			t.Fatalf("%s\n%s", res, log.String())
		}
		pushed := strings.Contains(log.String(), "Pushing what the job built")
		if pushed != protected {
			t.Fatalf("protected=%v (the variable says true): pushed=%v\n%s", protected, pushed, log.String())
		}
		if !protected && !strings.Contains(log.String(), "Not pushing to the binary cache: main is not a protected ref") {
			t.Fatalf("the log does not say why nothing was pushed:\n%s", log.String())
		}
	}
}

// hearth cache watch pushes what the daemon builds, without any job, and empties the queue.
func TestCacheWatch(t *testing.T) {
	dir := t.TempDir()
	cfg := writeCacheConfig(t, "", "", fmt.Sprintf("\n[cache.file]\ndir = %q\n", dir))
	w := startWatch(t, cfg, "--interval", "200ms")
	built, err := daemonOf(t).BuildChain(fmt.Sprint("watch-", time.Now().UnixNano()), 2)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "cache watch to push the built paths", 30*time.Second, func() bool {
		for _, p := range built {
			h := strings.SplitN(filepath.Base(p), "-", 2)[0]
			if _, err := os.Stat(filepath.Join(dir, h+".narinfo")); err != nil {
				return false
			}
		}
		return true
	})
	waitFor(t, "the queue to empty", 10*time.Second, func() bool { return len(queueEntries(t)) == 0 })
	if !strings.Contains(w.logs.String(), "msg=pushed") {
		t.Fatalf("watch logged nothing about the push:\n%s", w.logs.String())
	}
}
