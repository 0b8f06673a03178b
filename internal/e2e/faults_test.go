package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
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
