package s3_test

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hearth-ci/hearth/cache"
	"github.com/hearth-ci/hearth/cache/cachetest"
	"github.com/hearth-ci/hearth/cache/s3"
	"github.com/hearth-ci/hearth/internal/testenv"
	"github.com/hearth-ci/hearth/nix/narinfo"
	"github.com/hearth-ci/hearth/nix/signing"
	"github.com/hearth-ci/hearth/nixstore"
)

var (
	parts  *testenv.Parts
	server *testenv.S3
)

func TestMain(m *testing.M) {
	flag.Parse()
	cachetest.Main(&mainWithS3{m}, &parts)
}

// mainWithS3 starts the S3 server once the environment is up, and stops it after the tests.
type mainWithS3 struct{ m *testing.M }

func (w *mainWithS3) Run() int {
	var err error
	server, err = testenv.StartS3(filepath.Join(parts.Dir, "s3"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer server.Close()
	return w.m.Run()
}

var buckets atomic.Int64

// newBucket makes an empty bucket and the config to reach it through the recording proxy.
func newBucket(t *testing.T) (s3.Config, string) {
	t.Helper()
	name := fmt.Sprintf("cache-%d", buckets.Add(1))
	dir, err := server.CreateBucket(name)
	if err != nil {
		t.Fatal(err)
	}
	id, secret, err := server.WriteCredentials(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return s3.Config{Bucket: name, Region: "us-east-1", Endpoint: server.URL, AccessKeyIDFile: id, SecretAccessKeyFile: secret}, dir
}

func TestConformance(t *testing.T) {
	cachetest.Run(t, parts, func(t *testing.T) cachetest.Instance {
		cfg, dir := newBucket(t)
		key, err := signing.Generate("hearth-s3-test-1")
		if err != nil {
			t.Fatal(err)
		}
		b, err := s3.New(context.Background(), cfg, &key)
		if err != nil {
			t.Fatal(err)
		}
		return cachetest.Instance{
			// The posix directory of the bucket is the same layout, which Nix reads as file://.
			Backend: b, Substituter: "file://" + dir, PublicKey: key.Public().String(),
			Tamper: func(t *testing.T, storePath string) {
				h := strings.SplitN(filepath.Base(storePath), "-", 2)[0]
				f, err := os.Open(filepath.Join(dir, h+".narinfo"))
				if err != nil {
					t.Fatal(err)
				}
				ni, err := narinfo.Parse(f)
				f.Close()
				if err != nil {
					t.Fatal(err)
				}
				p := filepath.Join(dir, ni.URL)
				raw, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, cachetest.TamperZstd(t, raw), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			// The server keeps objects, and the parts of unfinished multipart uploads, as files
			// under the bucket's directory.
			Stored: func(t *testing.T) []string { return cachetest.FilesUnder(t, dir) },
		}
	})
	// Every request of the suite went through the recording proxy: none may carry the checksum
	// headers Backblaze B2 rejects.
	assertNoChecksumHeaders(t)
}

func assertNoChecksumHeaders(t *testing.T) {
	t.Helper()
	seen := server.Headers()
	if len(seen) == 0 {
		t.Fatal("no request reached the S3 server through the proxy")
	}
	for _, h := range seen {
		for name := range h {
			l := strings.ToLower(name)
			if strings.HasPrefix(l, "x-amz-checksum-") || l == "x-amz-sdk-checksum-algorithm" {
				t.Fatalf("a request carried %s: %v", name, h)
			}
		}
	}
}

// The S3 server dies in the middle of a push of several paths: the push reports the failure, no
// narinfo in the bucket points at a NAR that is missing or wrong, and a later push completes.
func TestServerKilledMidPush(t *testing.T) {
	ctx := context.Background()
	cfg, _ := newBucket(t)
	cfg.MaxAttempts = 2
	key, err := signing.Generate("hearth-s3-kill-1")
	if err != nil {
		t.Fatal(err)
	}
	b, err := s3.New(ctx, cfg, &key)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for i := 0; i < 6; i++ {
		p, err := parts.AddRandom(fmt.Sprintf("kill-%d-%d", time.Now().UnixNano(), i), 12<<20)
		if err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	store := nixstore.Daemon(parts.NixSocket)
	pusher := &cache.Pusher{Backend: b, Store: store, Uploads: 1}
	var once sync.Once
	pusher.Pushed = func(nixstore.PathInfo, cache.Stats) {
		// After the first path is in, the server dies with the next upload under way.
		once.Do(func() { go func() { time.Sleep(50 * time.Millisecond); server.Kill() }() })
	}
	sum, err := pusher.Push(ctx, paths, cache.PathsOnly)
	if err == nil {
		t.Fatalf("the push succeeded although the server died: %+v", sum)
	}
	if sum.Pushed < 1 || sum.Pushed >= len(paths) {
		t.Fatalf("the server died at the wrong time: %+v", sum)
	}
	t.Logf("push failed as expected after %d paths: %v", sum.Pushed, err)

	if err := server.Restart(); err != nil {
		t.Fatal(err)
	}
	// Every narinfo that exists points at a complete, matching NAR, signed.
	pub := key.Public()
	v, err := b.Verify(ctx, &pub, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Problems) > 0 || v.Checked != sum.Pushed {
		t.Fatalf("after the crash: %d narinfos, %d pushed, problems %v", v.Checked, sum.Pushed, v.Problems)
	}
	sum2, err := pusher.Push(ctx, paths, cache.PathsOnly)
	if err != nil {
		t.Fatal(err)
	}
	if sum2.Pushed+sum2.Present != len(paths) || sum2.Present != sum.Pushed {
		t.Fatalf("the later push: %+v (the first pushed %d)", sum2, sum.Pushed)
	}
	if v, err := b.Verify(ctx, &pub, nil); err != nil || v.Checked != len(paths) || len(v.Problems) > 0 {
		t.Fatalf("after the later push: %d narinfos, problems %v, %v", v.Checked, v.Problems, err)
	}
}

// A missing bucket, wrong credentials and unreadable credential files each say what is wrong.
func TestOpenErrorsAreSentences(t *testing.T) {
	ctx := context.Background()
	cfg, _ := newBucket(t)
	missing := cfg
	missing.Bucket = "no-such-bucket"
	if _, err := s3.Open(ctx, missing); err == nil || !strings.Contains(err.Error(), `bucket "no-such-bucket" does not exist at `+server.URL) {
		t.Fatalf("missing bucket: %v", err)
	}
	wrong := cfg
	wrong.SecretAccessKeyFile = filepath.Join(t.TempDir(), "wrong")
	if err := os.WriteFile(wrong.SecretAccessKeyFile, []byte("not-the-secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s3.Open(ctx, wrong); err == nil || !strings.Contains(err.Error(), "refused the credentials") || !strings.Contains(err.Error(), "(403)") {
		t.Fatalf("wrong secret: %v", err)
	}
	unreadable := cfg
	unreadable.AccessKeyIDFile = "/nonexistent/key-id"
	if _, err := s3.Open(ctx, unreadable); err == nil || !strings.Contains(err.Error(), "read the S3 access key id") || !strings.Contains(err.Error(), "/nonexistent/key-id") {
		t.Fatalf("unreadable key file: %v", err)
	}
}

// B2 answers 500 and 503 when it is busy: a push rides them out with retries, on small uploads
// and on the parts of a multipart one, and ends with every path in the cache.
func TestRetriesServerErrors(t *testing.T) {
	ctx := context.Background()
	small, err := parts.AddRandom(fmt.Sprint("retry-small-", time.Now().UnixNano()), 4<<10)
	if err != nil {
		t.Fatal(err)
	}
	big, err := parts.AddRandom(fmt.Sprint("retry-big-", time.Now().UnixNano()), 20<<20)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		path   string
		status int
		match  func(*http.Request) bool
	}{
		{"503 on a NAR upload", small, http.StatusServiceUnavailable, func(r *http.Request) bool {
			return r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/nar/")
		}},
		{"500 on a part of a multipart upload", big, http.StatusInternalServerError, func(r *http.Request) bool {
			return r.Method == http.MethodPut && r.URL.Query().Get("partNumber") == "2"
		}},
		{"503 on the narinfo", small, http.StatusServiceUnavailable, func(r *http.Request) bool {
			return r.Method == http.MethodPut && strings.HasSuffix(r.URL.Path, ".narinfo")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, _ := newBucket(t)
			key, err := signing.Generate("hearth-s3-retry-1")
			if err != nil {
				t.Fatal(err)
			}
			b, err := s3.New(ctx, cfg, &key)
			if err != nil {
				t.Fatal(err)
			}
			server.FailNext(2, tc.status, tc.match)
			defer server.FailNext(0, 0, nil)
			p := &cache.Pusher{Backend: b, Store: nixstore.Daemon(parts.NixSocket)}
			sum, err := p.Push(ctx, []string{tc.path}, cache.PathsOnly)
			if err != nil || sum.Pushed != 1 {
				t.Fatalf("push through two %d answers: %+v, %v", tc.status, sum, err)
			}
			if n := server.Failed(); n != 2 {
				t.Fatalf("the proxy failed %d requests, want 2: the retries were not exercised", n)
			}
			pub := key.Public()
			if v, err := b.Verify(ctx, &pub, []string{tc.path}); err != nil || len(v.Problems) != 0 {
				t.Fatalf("after the retries: %+v, %v", v, err)
			}
		})
	}
	// Control: with retries off, the same answers fail the push, and say what the server said.
	cfg, _ := newBucket(t)
	cfg.MaxAttempts = 1
	b, err := s3.New(ctx, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	server.FailNext(1, http.StatusServiceUnavailable, func(r *http.Request) bool { return r.Method == http.MethodPut })
	defer server.FailNext(0, 0, nil)
	_, err = (&cache.Pusher{Backend: b, Store: nixstore.Daemon(parts.NixSocket)}).Push(ctx, []string{small}, cache.PathsOnly)
	if err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("control without retries: %v", err)
	}
}
