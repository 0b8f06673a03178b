package attic_test

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hearth-ci/hearth/cache"
	"github.com/hearth-ci/hearth/cache/attic"
	"github.com/hearth-ci/hearth/cache/cachetest"
	"github.com/hearth-ci/hearth/internal/testenv"
	"github.com/hearth-ci/hearth/internal/testenv/atticd"
	"github.com/hearth-ci/hearth/nixstore"
)

var parts *testenv.Parts

func TestMain(m *testing.M) {
	flag.Parse()
	cachetest.Main(m, &parts)
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
	cachetest.Run(t, parts, func(t *testing.T) cachetest.Instance {
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
			Stored: func(t *testing.T) []string {
				srv.WaitIdle()
				return cachetest.FilesUnder(t, srv.Dir())
			},
		}
	})
}

// Refusals become sentences that say what is wrong: a token the server does not accept, a token
// that may only pull, a cache that does not exist, a proxy's body limit.
func TestRefusalsAreSentences(t *testing.T) {
	ctx := context.Background()
	srv, _, pushToken := server(t)
	writeToken := func(tok string) string {
		f := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(f, []byte(tok), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	if _, err := srv.CreateCache("private", false); err != nil {
		t.Fatal(err)
	}
	bad := writeToken("not-a-token")
	_, err := attic.New(ctx, attic.Config{Endpoint: srv.URL, Cache: "private", TokenFile: bad})
	if err == nil || !strings.Contains(err.Error(), "refused the token in "+bad+" (401)") {
		t.Fatalf("bad token: %v", err)
	}
	pullOnly := writeToken(srv.Token(atticd.Permissions{Pattern: "*", Pull: true}))
	b, err := attic.New(ctx, attic.Config{Endpoint: srv.URL, Cache: "private", TokenFile: pullOnly})
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.Missing(ctx, []nixstore.PathInfo{{Path: "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x"}})
	if err == nil || !strings.Contains(err.Error(), "may not push to Attic cache \"private\" (403)") {
		t.Fatalf("pull-only token: %v", err)
	}
	all := writeToken(srv.Token(atticd.Permissions{Pattern: "*", Pull: true, Push: true}))
	_, err = attic.New(ctx, attic.Config{Endpoint: srv.URL, Cache: "nosuch", TokenFile: all})
	if err == nil || !strings.Contains(err.Error(), "has no cache \"nosuch\" (404)") {
		t.Fatalf("missing cache: %v", err)
	}
	_, err = attic.New(ctx, attic.Config{Endpoint: srv.URL, Cache: "ci", TokenFile: filepath.Join(t.TempDir(), "absent")})
	if err == nil || !strings.Contains(err.Error(), "read the Attic token") {
		t.Fatalf("unreadable token file: %v", err)
	}

	b, err = attic.New(ctx, attic.Config{Endpoint: srv.URL, Cache: "ci", TokenFile: pushToken, MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	big, err := parts.AddRandom(fmt.Sprint("attic-413-", time.Now().UnixNano()), 2<<20)
	if err != nil {
		t.Fatal(err)
	}
	srv.MaxBody = 1 << 20
	infos, err := nixstore.Daemon(parts.NixSocket).Info(ctx, []string{big})
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.Put(ctx, infos[0], cache.NarOf(infos[0]))
	if err == nil || !strings.Contains(err.Error(), "larger than a proxy in front of the Attic server accepts (413)") {
		t.Fatalf("413: %v", err)
	}
}

// A path whose metadata is larger than the header a proxy in front of atticd accepts is still
// pushed (the metadata goes in a preamble of the body), and a closure larger than one SQL query
// of the server may bind is still asked about; the references are sent sorted, so the server's
// signatures verify in Nix. The stand-in keeps both limits, so a client that ignored them fails.
func TestLimitsOfTheServer(t *testing.T) {
	ctx := context.Background()
	srv, pub, token := server(t)
	b, err := attic.New(ctx, attic.Config{Endpoint: srv.URL, Cache: "ci", TokenFile: token})
	if err != nil {
		t.Fatal(err)
	}
	// A path with 120 references: its metadata is over the 8 KiB a header line may have.
	root, err := manyRefs(120)
	if err != nil {
		t.Fatal(err)
	}
	infos, err := nixstore.Daemon(parts.NixSocket).Info(ctx, []string{root})
	if err != nil {
		t.Fatal(err)
	}
	if meta, _ := json.Marshal(infos[0].NarInfo().References); len(meta) <= 8<<10 {
		t.Fatalf("the references alone are %d bytes: too few to exceed a header line", len(meta))
	}
	p := &cache.Pusher{Backend: b, Store: nixstore.Daemon(parts.NixSocket), Uploads: 4}
	sum, err := p.Push(ctx, []string{root}, cache.Closures)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Pushed != 121 {
		t.Fatalf("pushed %+v", sum)
	}
	if _, preambles, _ := srv.Counts(); preambles != 1 {
		t.Fatalf("%d uploads used a preamble, want 1 (the root's)", preambles)
	}
	if _, err := parts.Substitute(srv.URL+"ci", pub, root); err != nil {
		t.Fatal(err)
	}

	// More hashes than SQLite binds in one query.
	const many = 40000
	infos = nil
	for i := 0; i < many; i++ {
		h := fmt.Sprintf("%032d", i)
		h = strings.NewReplacer("0", "a", "1", "b", "2", "c", "3", "d", "4", "f", "5", "g", "6", "h", "7", "i", "8", "j", "9", "k").Replace(h)
		infos = append(infos, nixstore.PathInfo{Path: "/nix/store/" + h + "-x"})
	}
	missing, err := b.Missing(ctx, infos)
	if err != nil {
		t.Fatal(err)
	}
	if len(missing) != many {
		t.Fatalf("%d of %d hashes missing", len(missing), many)
	}
}

// An upload the server (or the proxy in front of it) answers with 503 is sent again, NAR and
// all, and lands; with no attempts left the error says what the server answered.
func TestRetriesUnavailable(t *testing.T) {
	ctx := context.Background()
	srv, pub, token := server(t)
	path, err := parts.AddRandom(fmt.Sprint("attic-retry-", time.Now().UnixNano()), 100<<10)
	if err != nil {
		t.Fatal(err)
	}
	infos, err := nixstore.Daemon(parts.NixSocket).Info(ctx, []string{path})
	if err != nil {
		t.Fatal(err)
	}
	b, err := attic.New(ctx, attic.Config{Endpoint: srv.URL, Cache: "ci", TokenFile: token, MaxAttempts: 2})
	if err != nil {
		t.Fatal(err)
	}
	srv.FailUploads(1)
	if _, err := b.Put(ctx, infos[0], cache.NarOf(infos[0])); err != nil {
		t.Fatalf("an upload that met one 503: %v", err)
	}
	if uploads, _, _ := srv.Counts(); uploads != 1 {
		t.Fatalf("%d uploads stored, want 1", uploads)
	}
	if _, err := parts.Substitute(srv.URL+"ci", pub, path); err != nil {
		t.Fatal(err)
	}
	srv.FailUploads(2)
	_, err = b.Put(ctx, infos[0], cache.NarOf(infos[0]))
	if err == nil || !strings.Contains(err.Error(), "(503)") {
		t.Fatalf("an upload that met a 503 on each of its 2 attempts: %v", err)
	}
}

// manyRefs builds a path that references n tiny paths.
func manyRefs(n int) (string, error) {
	stamp := time.Now().UnixNano()
	var b strings.Builder
	fmt.Fprintf(&b, "let tools = builtins.storePath %q;\n  leaf = i: derivation { name = \"leaf-%d-with-a-long-name-to-grow-the-metadata-${toString i}\"; system = \"x86_64-linux\"; builder = \"${tools}/bin/bash\"; PATH = \"${tools}/bin\"; args = [\"-c\" \"echo ${toString i} > $out\"]; };\n", parts.Tools, stamp)
	fmt.Fprintf(&b, "in derivation { name = \"root-%d\"; system = \"x86_64-linux\"; builder = \"${tools}/bin/bash\"; PATH = \"${tools}/bin\"; args = [\"-c\" \"echo $deps > $out\"];\n  deps = builtins.genList leaf %d; }\n", stamp, n)
	f := filepath.Join(parts.Dir, fmt.Sprintf("many-%d.nix", stamp))
	if err := os.WriteFile(f, []byte(b.String()), 0o644); err != nil {
		return "", err
	}
	return parts.Nix("nix-build", "--no-out-link", f)
}
