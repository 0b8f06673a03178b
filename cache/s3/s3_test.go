package s3_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/hearth-ci/hearth/cache/cachetest"
	"github.com/hearth-ci/hearth/cache/narinfo"
	"github.com/hearth-ci/hearth/cache/s3"
	"github.com/hearth-ci/hearth/cache/signing"
	"github.com/hearth-ci/hearth/internal/testenv"
)

var (
	env    *testenv.Env
	server *testenv.S3
)

func TestMain(m *testing.M) {
	flag.Parse()
	cachetest.Main(&mainWithS3{m}, &env)
}

// mainWithS3 starts the S3 server once the environment is up, and stops it after the tests.
type mainWithS3 struct{ m *testing.M }

func (w *mainWithS3) Run() int {
	var err error
	server, err = testenv.StartS3(filepath.Join(env.Dir, "s3"))
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
	cachetest.Run(t, env, func(t *testing.T) cachetest.Instance {
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
