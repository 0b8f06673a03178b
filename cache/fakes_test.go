package cache

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/hearth-ci/hearth/nixstore"
)

// fakePath makes a valid store path from n and name.
func fakePath(n int, name string) string {
	const alphabet = "0123456789abcdfghijklmnpqrsvwxyz"
	h := []byte(strings.Repeat("0", 32))
	for i := 31; n > 0; i-- {
		h[i] = alphabet[n%32]
		n /= 32
	}
	return "/nix/store/" + string(h) + "-" + name
}

// fakeStore is a store held in memory: paths with their references, and derivations with their
// outputs. Closure, Info and Outputs calls are counted.
type fakeStore struct {
	mu       sync.Mutex
	paths    map[string]nixstore.PathInfo
	drvs     map[string][]string
	calls    int
	maxPaths int // the most paths one call was given
}

func newFakeStore() *fakeStore {
	return &fakeStore{paths: map[string]nixstore.PathInfo{}, drvs: map[string][]string{}}
}

// add puts a path in the store that references refs.
func (s *fakeStore) add(path string, refs ...string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.paths[path] = nixstore.PathInfo{Path: path, NarHash: "sha256:" + strings.Repeat("0", 52), NarSize: 100, References: refs}
	return path
}

func (s *fakeStore) count(paths []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	s.maxPaths = max(s.maxPaths, len(paths))
}

func (s *fakeStore) Info(_ context.Context, paths []string) ([]nixstore.PathInfo, error) {
	s.count(paths)
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []nixstore.PathInfo
	for _, p := range paths {
		in, ok := s.paths[p]
		if !ok {
			return nil, fmt.Errorf("%s is not in the store", p)
		}
		out = append(out, in)
	}
	return out, nil
}

func (s *fakeStore) Closure(ctx context.Context, paths []string) ([]nixstore.PathInfo, error) {
	s.count(paths)
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[string]bool{}
	var out []nixstore.PathInfo
	var visit func(p string) error
	visit = func(p string) error {
		if seen[p] {
			return nil
		}
		seen[p] = true
		in, ok := s.paths[p]
		if !ok {
			return fmt.Errorf("%s is not in the store", p)
		}
		out = append(out, in)
		for _, r := range in.References {
			if err := visit(r); err != nil {
				return err
			}
		}
		return nil
	}
	for _, p := range paths {
		if err := visit(p); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (s *fakeStore) Outputs(_ context.Context, drvs ...string) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, d := range drvs {
		out = append(out, s.drvs[d]...)
	}
	return out, nil
}

func (s *fakeStore) Has(path string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, isPath := s.paths[path]
	_, isDrv := s.drvs[path]
	return isPath || isDrv
}

// fakeBackend is a cache held in memory. Puts of paths in fail fail with that error; uploads are
// recorded in the order they finish.
type fakeBackend struct {
	mu       sync.Mutex
	held     map[string]bool
	fail     map[string]error
	uploaded []string
	// started is told of each Put as it starts, when set; release, when set, holds each Put until
	// it is closed, or until its context ends unless stubborn is set.
	started  chan string
	release  chan struct{}
	stubborn bool
}

func newFakeBackend() *fakeBackend {
	return &fakeBackend{held: map[string]bool{}, fail: map[string]error{}}
}

func (b *fakeBackend) String() string { return "fake://cache" }

func (b *fakeBackend) Missing(_ context.Context, paths []nixstore.PathInfo) ([]string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var missing []string
	for _, p := range paths {
		if !b.held[p.Path] {
			missing = append(missing, p.Path)
		}
	}
	return missing, nil
}

func (b *fakeBackend) Put(ctx context.Context, info nixstore.PathInfo, _ NarSource) (Stats, error) {
	if b.started != nil {
		b.started <- info.Path
	}
	if b.release != nil && b.stubborn {
		<-b.release
	} else if b.release != nil {
		select {
		case <-b.release:
		case <-ctx.Done():
			return Stats{}, ctx.Err()
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, r := range info.References {
		if r != info.Path && !b.held[r] {
			return Stats{}, fmt.Errorf("%s was put before %s, which it references", info.Path, r)
		}
	}
	if err := b.fail[info.Path]; err != nil {
		return Stats{}, err
	}
	b.held[info.Path] = true
	b.uploaded = append(b.uploaded, info.Path)
	return Stats{NarBytes: int64(info.NarSize), FileBytes: int64(info.NarSize) / 2}, nil
}

func (b *fakeBackend) hold(path string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.held[path] = true
}

func (b *fakeBackend) has(path string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.held[path]
}

func (b *fakeBackend) uploads() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.uploaded)
}
