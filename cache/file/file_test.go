package file_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-ci/hearth/cache"
	"github.com/hearth-ci/hearth/cache/cachetest"
	"github.com/hearth-ci/hearth/cache/file"
	"github.com/hearth-ci/hearth/internal/testenv"
	"github.com/hearth-ci/hearth/nix/narinfo"
	"github.com/hearth-ci/hearth/nix/signing"
	"github.com/hearth-ci/hearth/nixstore"
)

var parts *testenv.Parts

func TestMain(m *testing.M) {
	flag.Parse()
	cachetest.Main(m, &parts)
}

func TestConformance(t *testing.T) {
	cachetest.Run(t, parts, func(t *testing.T) cachetest.Instance {
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
			Stored: func(t *testing.T) []string { return cachetest.FilesUnder(t, dir) },
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

// recorder wraps a backend and notes when two Puts of the same path overlap.
type recorder struct {
	cache.Backend
	mu       sync.Mutex
	inFlight map[string]bool
	puts     map[string]int
	overlap  []string
}

func (r *recorder) Put(ctx context.Context, info nixstore.PathInfo, src cache.NarSource) (cache.Stats, error) {
	r.mu.Lock()
	if r.inFlight[info.Path] {
		r.overlap = append(r.overlap, info.Path)
	}
	r.inFlight[info.Path] = true
	r.puts[info.Path]++
	r.mu.Unlock()
	time.Sleep(50 * time.Millisecond) // widen the window in which a second pusher could collide
	st, err := r.Backend.Put(ctx, info, src)
	r.mu.Lock()
	r.inFlight[info.Path] = false
	r.mu.Unlock()
	return st, err
}

// Concurrent pushers of one closure (the driver flushing while `hearth cache watch` drains) never
// upload the same path at the same time, and upload each path once.
func TestConcurrentPushersNeverPushAPathTwiceAtOnce(t *testing.T) {
	dir := t.TempDir()
	b, err := file.New(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{Backend: b, inFlight: map[string]bool{}, puts: map[string]int{}}
	chain, err := parts.BuildChain(fmt.Sprint("concurrent-", time.Now().UnixNano()), 4)
	if err != nil {
		t.Fatal(err)
	}
	locks := t.TempDir()
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := &cache.Pusher{Backend: rec, Store: nixstore.Daemon(parts.NixSocket), Uploads: 2, LockDir: locks}
			_, err := p.Push(context.Background(), []string{chain[len(chain)-1]}, cache.Closures)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(rec.overlap) > 0 {
		t.Fatalf("paths were uploaded twice at once: %v", rec.overlap)
	}
	for p, n := range rec.puts {
		if n != 1 {
			t.Errorf("%s was uploaded %d times", p, n)
		}
	}
	if len(rec.puts) != len(chain) {
		t.Fatalf("uploaded %d paths, want %d", len(rec.puts), len(chain))
	}
}

// A push that died between its NAR and its narinfo left a NAR nothing names: prune removes it once
// it is older than the cut-off, and leaves a fresh one (a push may be about to write its narinfo).
func TestPruneRemovesOrphanedNARs(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b, err := file.New(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := parts.AddRandom(fmt.Sprint("orphan-", time.Now().UnixNano()), 4096)
	if err != nil {
		t.Fatal(err)
	}
	infos, err := nixstore.Daemon(parts.NixSocket).Info(ctx, []string{p})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Put(ctx, infos[0], cache.NarOf(infos[0])); err != nil {
		t.Fatal(err)
	}
	ni := readNarinfo(t, dir, p)
	if err := os.Remove(filepath.Join(dir, strings.SplitN(filepath.Base(p), "-", 2)[0]+".narinfo")); err != nil {
		t.Fatal(err)
	}
	nar := filepath.Join(dir, ni.URL)
	old := time.Now().Add(-48 * time.Hour)
	for _, tc := range []struct {
		name     string
		modified time.Time
		removed  bool
	}{{"fresh", time.Now(), false}, {"older than the cut-off", old, true}} {
		if err := os.Chtimes(nar, tc.modified, tc.modified); err != nil {
			t.Fatal(err)
		}
		sum, err := b.Prune(ctx, cache.PruneRequest{Before: time.Now().Add(-24 * time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		_, statErr := os.Stat(nar)
		if gone := os.IsNotExist(statErr); gone != tc.removed || sum.NARs != map[bool]int{true: 1}[tc.removed] {
			t.Fatalf("%s orphaned NAR: removed %v (%+v), want %v", tc.name, gone, sum, tc.removed)
		}
	}
}
