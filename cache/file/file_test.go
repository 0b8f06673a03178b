package file_test

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hearth-ci/hearth/cache/cachetest"
	"github.com/hearth-ci/hearth/cache/file"
	"github.com/hearth-ci/hearth/cache/narinfo"
	"github.com/hearth-ci/hearth/cache/signing"
	"github.com/hearth-ci/hearth/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	flag.Parse()
	cachetest.Main(m, &env)
}

func TestConformance(t *testing.T) {
	cachetest.Run(t, env, func(t *testing.T) cachetest.Instance {
		dir := t.TempDir()
		key, err := signing.Generate("hearth-file-test-1")
		if err != nil {
			t.Fatal(err)
		}
		b, err := file.New(dir, &key)
		if err != nil {
			t.Fatal(err)
		}
		return cachetest.Instance{
			Backend: b, Substituter: "file://" + dir, PublicKey: key.Public().String(),
			Tamper: func(t *testing.T, storePath string) {
				ni := readNarinfo(t, dir, storePath)
				p := filepath.Join(dir, ni.URL)
				b, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, cachetest.TamperZstd(t, b), 0o644); err != nil {
					t.Fatal(err)
				}
			},
		}
	})
}

func readNarinfo(t *testing.T, dir, storePath string) *narinfo.NarInfo {
	t.Helper()
	h := strings.SplitN(filepath.Base(storePath), "-", 2)[0]
	f, err := os.Open(filepath.Join(dir, h+".narinfo"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ni, err := narinfo.Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	return ni
}
