package attic_test

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/hearth-ci/hearth/cache/attic"
	"github.com/hearth-ci/hearth/cache/cachetest"
	"github.com/hearth-ci/hearth/internal/atticd"
	"github.com/hearth-ci/hearth/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	flag.Parse()
	cachetest.Main(m, &env)
}

// server starts an Attic stand-in with a public cache "ci" and a token that may push to it.
func server(t *testing.T) (*atticd.Server, string, string) {
	t.Helper()
	dir := t.TempDir()
	srv, err := atticd.Start(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	pub, err := srv.CreateCache("ci", true)
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(srv.Token(atticd.Permissions{Pattern: "ci", Pull: true, Push: true})+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return srv, pub, tokenFile
}

func TestConformance(t *testing.T) {
	cachetest.Run(t, env, func(t *testing.T) cachetest.Instance {
		srv, pub, tokenFile := server(t)
		b, err := attic.New(context.Background(), attic.Config{Endpoint: srv.URL, Cache: "ci", TokenFile: tokenFile})
		if err != nil {
			t.Fatal(err)
		}
		return cachetest.Instance{
			Backend: b, Substituter: srv.URL + "ci", PublicKey: pub,
			Tamper: func(t *testing.T, storePath string) {
				nars, err := filepath.Glob(filepath.Join(srv.Dir(), "nars", "*"))
				if err != nil || len(nars) == 0 {
					t.Fatalf("no NARs stored (%v)", err)
				}
				for _, p := range nars {
					b, err := os.ReadFile(p)
					if err != nil {
						t.Fatal(err)
					}
					cachetest.TamperPlain(b)
					if err := os.WriteFile(p, b, 0o644); err != nil {
						t.Fatal(err)
					}
				}
			},
		}
	})
}
