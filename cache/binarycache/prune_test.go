package binarycache

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-ci/hearth/cache"
)

// memory is Objects in a map, for the prune's bookkeeping; the file and S3 backends run the same
// prune against real stores in the conformance suite. The prune calls it from several goroutines.
type memory struct {
	mu      sync.Mutex
	objects map[string]ObjectInfo
	data    map[string]string
	// vanish are narinfos listed but gone when read, as another prune leaves them.
	vanish map[string]bool
}

func (m *memory) Exists(_ context.Context, key string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.objects[key]
	return ok, nil
}
func (m *memory) Put(context.Context, string, io.Reader, string) error { return nil }
func (m *memory) Get(_ context.Context, key string) (io.ReadCloser, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.vanish[key] {
		return nil, fmt.Errorf("%s: %w", key, ErrNotExist)
	}
	return io.NopCloser(strings.NewReader(m.data[key])), nil
}
func (m *memory) ListInfo(_ context.Context, dir, suffix string) ([]ObjectInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []ObjectInfo
	for k, o := range m.objects {
		if strings.HasPrefix(k, dir) && !strings.Contains(k[len(dir):], "/") && strings.HasSuffix(k, suffix) {
			out = append(out, o)
		}
	}
	return out, nil
}
func (m *memory) Delete(_ context.Context, key string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.objects, key)
	return nil
}
func (m *memory) String() string { return "memory" }

// add puts a narinfo for hash-name, written at t, whose NAR is nar, referencing refs.
func (m *memory) add(hash, name, nar string, t time.Time, refs ...string) {
	key := hash + ".narinfo"
	m.objects[key] = ObjectInfo{Key: key, Size: 100, Modified: t}
	m.data[key] = fmt.Sprintf("StorePath: /nix/store/%s-%s\nURL: %s\nCompression: zstd\nNarHash: sha256:%s\nNarSize: 8\nReferences: %s\n",
		hash, name, nar, strings.Repeat("0", 52), strings.Join(refs, " "))
	if _, ok := m.objects[nar]; !ok {
		m.objects[nar] = ObjectInfo{Key: nar, Size: 1000, Modified: t}
	}
}

func TestPrune(t *testing.T) {
	now := time.Now()
	old, recent := now.Add(-48*time.Hour), now
	h := func(c byte) string { return strings.Repeat(string(c), 32) }
	m := &memory{objects: map[string]ObjectInfo{}, data: map[string]string{}, vanish: map[string]bool{}}
	m.add(h('a'), "dep-of-recent", "nar/a.nar.zst", old)
	m.add(h('b'), "recent", "nar/b.nar.zst", recent, h('a')+"-dep-of-recent", h('b')+"-recent")
	m.add(h('c'), "kept", "nar/c.nar.zst", old)
	m.add(h('d'), "old", "nar/d.nar.zst", old)
	m.add(h('f'), "old-sharing-kept-nar", "nar/c.nar.zst", old)
	m.add(h('g'), "vanished", "nar/g.nar.zst", old)
	m.vanish[h('g')+".narinfo"] = true
	m.objects["nar/orphan-old.nar.zst"] = ObjectInfo{Key: "nar/orphan-old.nar.zst", Modified: old}
	m.objects["nar/orphan-new.nar.zst"] = ObjectInfo{Key: "nar/orphan-new.nar.zst", Modified: recent}

	sum, err := New(m, nil).Prune(context.Background(), cache.PruneRequest{Before: now.Add(-24 * time.Hour), Keep: []string{"/nix/store/" + h('c') + "-kept"}})
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for k := range m.objects {
		left = append(left, k)
	}
	slices.Sort(left)
	want := []string{h('a') + ".narinfo", h('b') + ".narinfo", h('c') + ".narinfo", h('g') + ".narinfo",
		"nar/a.nar.zst", "nar/b.nar.zst", "nar/c.nar.zst", "nar/orphan-new.nar.zst"}
	slices.Sort(want)
	if !slices.Equal(left, want) {
		t.Fatalf("left %v\nwant %v", left, want)
	}
	// Removed: the old path and the one sharing the kept NAR (their narinfos), d's NAR, the
	// vanished path's NAR (nobody names it) and the old orphan.
	if sum.Paths != 2 || sum.NARs != 3 || sum.Kept != 3 {
		t.Fatalf("summary %+v", sum)
	}
}
