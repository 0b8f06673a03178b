package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hearth-ci/hearth/runner"
)

// flaky is a proxy in front of a cache server that answers the first n uploads with an error, as
// a busy B2 (503 SlowDown) or a restarting Attic (500) does, then lets everything through.
type flaky struct {
	*httptest.Server
	failed atomic.Int64
}

func newFlaky(t *testing.T, target string, n int64, status int, body string) *flaky {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	f := &flaky{}
	proxy := httputil.NewSingleHostReverseProxy(u)
	// Attic's cache-config names the endpoint its client talks to from then on: this one.
	proxy.ModifyResponse = func(resp *http.Response) error {
		if !strings.Contains(resp.Request.URL.Path, "cache-config") {
			return nil
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		b = []byte(strings.ReplaceAll(string(b), strings.TrimSuffix(target, "/"), f.URL))
		resp.Body = io.NopCloser(bytes.NewReader(b))
		resp.ContentLength = int64(len(b))
		resp.Header.Set("Content-Length", fmt.Sprint(len(b)))
		return nil
	}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && f.failed.Load() < n {
			f.failed.Add(1)
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(status)
			fmt.Fprint(w, body)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(f.Close)
	return f
}

// A cache that answers 503 SlowDown (S3, as B2 does when busy) or 500 (Attic, restarting) for a
// while: the push backs off, retries and completes, and the job succeeds with everything pushed.
func TestPushRetriesThroughServerErrors(t *testing.T) {
	s3Key, s3Pub := keyPair(t, "hearth-e2e-flaky-1")
	s3Table, s3Dir := s3Bucket(t, s3Key)
	srv, atticPub, token := atticCache(t, "flaky")
	for _, tc := range []struct {
		name, backend, tables, substituter, public string
		// failures is how many uploads fail: for Attic, whose client waits 2 s, then 4.5 s
		// before its retries, two.
		failures int64
		flaky    *flaky
	}{
		{name: "s3 503 SlowDown", backend: "s3", substituter: "file://" + s3Dir, public: s3Pub, failures: 3},
		{name: "attic 500", backend: "attic", substituter: srv.URL + "flaky", public: atticPub, failures: 2},
	} {
		failures := tc.failures
		t.Run(tc.name, func(t *testing.T) {
			switch tc.backend {
			case "s3":
				tc.flaky = newFlaky(t, s3server.URL, failures, http.StatusServiceUnavailable,
					`<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>`)
				tc.tables = strings.Replace(s3Table, fmt.Sprintf("endpoint = %q", s3server.URL), fmt.Sprintf("endpoint = %q", tc.flaky.URL), 1)
			case "attic":
				tc.flaky = newFlaky(t, srv.URL, failures, http.StatusInternalServerError, `{"code":500,"error":"InternalServerError","message":"restarting"}`)
				tc.tables = fmt.Sprintf("\n[cache.attic]\nendpoint = %q\ncache = \"flaky\"\ntoken_file = %q\n", tc.flaky.URL+"/", token)
			}
			cfg := writeCacheConfig(t, "", fmt.Sprintf("backend = %q\nrequired = true", tc.backend), tc.tables)
			nonce := fmt.Sprintf("flaky-%s-%d", tc.backend, time.Now().UnixNano())
			start := time.Now()
			res, log := runJob(t, cfg, buildJob(nonce, 2, ""), "build")
			if res.State != "success" {
				t.Fatalf("%s\n%s", res, log)
			}
			if got := tc.flaky.failed.Load(); got != failures {
				t.Fatalf("the server failed %d uploads, want %d: the test proves nothing\n%s", got, failures, log)
			}
			built := builtPaths(log, nonce)
			for _, p := range built {
				if !strings.Contains(log, "pushed "+p+" (") {
					t.Fatalf("%s was not pushed:\n%s", p, log)
				}
				if _, err := parts.Substitute(tc.substituter, tc.public, p); err != nil {
					t.Fatal(err)
				}
			}
			t.Logf("%d failed uploads retried; the job took %s", failures, time.Since(start).Round(time.Millisecond))
		})
	}
}

// A stage that fails because of the host says so, naming the part, and is the runner's failure:
// the job's nix-daemon restarted under its build, or its builds dir's file system filled up.
func TestHostFaultsAreSaid(t *testing.T) {
	t.Run("daemon restarted mid-build", func(t *testing.T) {
		d := daemonOf(t)
		cfg := writeConfig(t, "", "")
		nonce := fmt.Sprint("restart-", time.Now().UnixNano())
		// The killed build leaves its build dir behind, as a daemon killed on a host would.
		t.Cleanup(func() {
			dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "nix-build-*"+nonce+"*"))
			for _, d := range dirs {
				os.RemoveAll(d)
			}
		})
		var log syncBuffer
		done := make(chan runner.Result, 1)
		go func() {
			done <- runner.New(jobOptions(t, cfg, "build:\n  script:\n    - |\n      cat > d.nix <<'EOF'\n"+indent(derivation(nonce, 6), "      ")+"\n      EOF\n    - nix-build --no-out-link d.nix\n", "build", &log)).Run(context.Background())
		}()
		waitFor(t, "the build to start", 30*time.Second, func() bool { return strings.Contains(log.String(), "building '") })
		if err := d.Restart(); err != nil {
			t.Fatal(err)
		}
		res := <-done
		if res.State == "success" || !strings.Contains(res.String(), "system failure") {
			t.Fatalf("the job: %s, want a system failure\n%s", res, log.String())
		}
		mustContain(t, log.String(), "the nix-daemon at "+d.NixSocket+" (the job's Nix) stopped or restarted during stage")
	})
	t.Run("builds dir full", func(t *testing.T) {
		root := filepath.Join(t.TempDir(), "small-builds")
		if err := os.MkdirAll(root, 0o755); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", root).CombinedOutput(); err != nil {
			t.Fatalf("mount a small file system: %v: %s", err, out)
		}
		defer exec.Command("umount", "-l", root).Run()
		cfg := writeConfig(t, fmt.Sprintf("builds_root = %q", root), "")
		res, log := runJob(t, cfg, "fill:\n  script:\n    - head -c 10000000 /dev/zero > big\n", "fill")
		if res.State == "success" || !strings.Contains(res.String(), "system failure") {
			t.Fatalf("the job: %s, want a system failure\n%s", res, log)
		}
		mustContain(t, log, "the file system of the job's builds dir (", "/builds in the job) is full")
	})
}

// containerd restarted while a stage runs: the container lives on in its shim and the stage ends
// with its output; cleanup and gc then work on the new containerd, and so does the next job.
func TestContainerdRestartedMidStage(t *testing.T) {
	cfg := writeConfig(t, "", "")
	var log syncBuffer
	done := make(chan runner.Result, 1)
	go func() {
		done <- runner.New(jobOptions(t, cfg, "slow:\n  script:\n    - echo before; sleep 3; echo after-the-restart\n", "slow", &log)).Run(context.Background())
	}()
	waitFor(t, "the stage to start", 30*time.Second, func() bool { return strings.Contains(log.String(), "\nbefore") })
	if err := parts.RestartContainerd(); err != nil {
		t.Fatal(err)
	}
	res := <-done
	if res.State != "success" || !strings.Contains(log.String(), "\nafter-the-restart") {
		t.Fatalf("the job across the restart: %s\n%s", res, log.String())
	}
	if out, err := runHearth(cfg, "gc", "--older-than", "1ns"); err != nil {
		t.Fatalf("gc after the restart: %v\n%s", err, out)
	}
	res2, log2 := runJob(t, cfg, "next:\n  script:\n    - echo next-job\n", "next")
	if res2.State != "success" || !strings.Contains(log2, "\nnext-job") {
		t.Fatalf("the next job after the restart: %s\n%s", res2, log2)
	}
}
