package open

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hearth-ci/hearth/cache"
	"github.com/hearth-ci/hearth/config"
	"github.com/hearth-ci/hearth/internal/testenv"
	"github.com/hearth-ci/hearth/internal/testenv/atticd"
	"github.com/hearth-ci/hearth/nix/signing"
)

// Every backend the config admits opens from its section, says what it is, and can be verified,
// with the key it was configured with. A backend added to config.CacheBackends without being
// wired here fails this test.
func TestEveryBackendOpens(t *testing.T) {
	dir := t.TempDir()
	key, err := signing.Generate("hearth-open-1")
	if err != nil {
		t.Fatal(err)
	}
	keyFile, pubFile, err := key.WriteFiles(dir)
	if err != nil || pubFile == "" {
		t.Fatal(err)
	}
	attic, err := atticd.Start(filepath.Join(dir, "attic"))
	if err != nil {
		t.Fatal(err)
	}
	defer attic.Close()
	atticKey, err := attic.CreateCache("ci", false)
	if err != nil {
		t.Fatal(err)
	}
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte(attic.Token(atticd.Permissions{Pattern: "ci", Pull: true, Push: true})), 0o600); err != nil {
		t.Fatal(err)
	}
	s3, err := testenv.StartS3(filepath.Join(dir, "s3"))
	if err != nil {
		t.Fatal(err)
	}
	defer s3.Close()
	if _, err := s3.CreateBucket("open"); err != nil {
		t.Fatal(err)
	}
	id, secret, err := s3.WriteCredentials(dir)
	if err != nil {
		t.Fatal(err)
	}
	sections := map[string]struct {
		toml, shows, key string
	}{
		"file":  {fmt.Sprintf("[cache.file]\ndir = %q\nsigning_key_file = %q\n", filepath.Join(dir, "cache"), keyFile), "file://" + filepath.Join(dir, "cache"), key.Public().String()},
		"s3":    {fmt.Sprintf("[cache.s3]\nbucket = \"open\"\nendpoint = %q\naccess_key_id_file = %q\nsecret_access_key_file = %q\nsigning_key_file = %q\n", s3.URL, id, secret, keyFile), "s3://open/ at " + s3.URL, key.Public().String()},
		"attic": {fmt.Sprintf("[cache.attic]\nendpoint = %q\ncache = \"ci\"\ntoken_file = %q\n", attic.URL, token), "attic " + attic.URL + " cache ci", atticKey},
	}
	for _, name := range config.CacheBackends {
		t.Run(name, func(t *testing.T) {
			sec, ok := sections[name]
			if !ok {
				t.Fatalf("no test for backend %q", name)
			}
			cfg := parse(t, fmt.Sprintf("[cache]\nbackend = %q\nqueue_dir = %q\njobs = 3\n%s", name, filepath.Join(dir, "queue"), sec.toml))
			b, err := Backend(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			if b.String() != sec.shows {
				t.Fatalf("opened %q, want %q", b.String(), sec.shows)
			}
			v, ok := b.(cache.Verifier)
			if !ok {
				t.Fatalf("%T cannot be verified", b)
			}
			paths := []string{"/nix/store/00000000000000000000000000000000-absent"}
			res, err := v.Verify(context.Background(), nil, paths)
			if err != nil {
				t.Fatal(err)
			}
			if res.Key == nil || res.Key.String() != sec.key || len(res.Problems) != 1 {
				t.Fatalf("verify of an absent path: %+v, want a problem and the key %s", res, sec.key)
			}
			p := Pusher(cfg, b)
			if p.Uploads != 3 || p.LockDir != filepath.Join(dir, "queue", ".locks") || p.Backend != b {
				t.Fatalf("pusher %+v", p)
			}
		})
	}
}

// A backend that cannot be opened says what to fix.
func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, toml, want string
	}{
		{"unreadable signing key", fmt.Sprintf("[cache.file]\ndir = %q\nsigning_key_file = \"/nonexistent/k.secret\"\n", dir), "read the signing key: open /nonexistent/k.secret"},
		{"no attic server", "[cache]\nbackend = \"attic\"\n[cache.attic]\nendpoint = \"http://127.0.0.1:1/\"\ncache = \"ci\"\ntoken_file = " + fmt.Sprintf("%q", writeFile(t, dir, "token", "t")) + "\n", "127.0.0.1:1"},
		{"empty attic token", "[cache]\nbackend = \"attic\"\n[cache.attic]\nendpoint = \"http://127.0.0.1:1/\"\ncache = \"ci\"\ntoken_file = " + fmt.Sprintf("%q", writeFile(t, dir, "empty", "")) + "\n", "the Attic token file " + filepath.Join(dir, "empty") + " is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Backend(context.Background(), parse(t, tc.toml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
}

func parse(t *testing.T, src string) *config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte(src + "\n[environments.default]\nstore_path = \"/nix/store/00000000000000000000000000000000-env\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
