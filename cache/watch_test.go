package cache

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-ci/hearth/internal/testlog"
)

// syncBuffer is read while it is written.
type syncBuffer = testlog.Buffer

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The watcher keeps trying a cache that is down when it starts, pushes what is queued, logs a
// corrupt entry once however many rounds see it, logs a failed push and retries it, and stops
// when its context ends.
func TestWatcher(t *testing.T) {
	store := newFakeStore()
	q, paths := queueWith(t, store, "first")
	if err := os.WriteFile(filepath.Join(q.Dir, "0-corrupt"+entrySuffix), []byte("not a queue entry\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	backend := newFakeBackend()
	var log syncBuffer
	var mu sync.Mutex
	opens := 0
	w := &Watcher{
		Queue:    q,
		Interval: 10 * time.Millisecond,
		Log:      slog.New(slog.NewTextHandler(&log, nil)),
		Open: func(context.Context) (*Pusher, error) {
			mu.Lock()
			defer mu.Unlock()
			opens++
			if opens < 3 {
				return nil, errors.New("the server is down")
			}
			return &Pusher{Backend: backend, Store: store}, nil
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()

	waitFor(t, "the first path to be pushed", func() bool { return backend.has(paths[0]) })
	if n := strings.Count(log.String(), "cannot open the binary cache; retrying"); n != 2 {
		t.Fatalf("logged %d failed opens, want 2:\n%s", n, log.String())
	}

	// A path queued later is pushed too; one that fails stays queued and is retried.
	late := store.add(fakePath(7, "late"))
	backend.mu.Lock()
	backend.fail[late] = errors.New("503 Service Unavailable")
	backend.mu.Unlock()
	if err := q.Add([]string{late}, ""); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the failed push to be logged twice", func() bool {
		return strings.Count(log.String(), "push failed; the paths stay queued") >= 2
	})
	backend.mu.Lock()
	delete(backend.fail, late)
	backend.mu.Unlock()
	waitFor(t, "the late path to be pushed", func() bool { return backend.has(late) })

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run returned %v when its context ended", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the watcher did not stop")
	}
	if n := strings.Count(log.String(), "corrupt queue entry"); n != 1 {
		t.Fatalf("the corrupt entry was logged %d times, want once:\n%s", n, log.String())
	}
	if !strings.Contains(log.String(), "msg=pushed entries=1") {
		t.Fatalf("no push was logged:\n%s", log.String())
	}
	if n := entries(t, q); n != 1 {
		t.Fatalf("%d entries left, want only the corrupt one", n)
	}
}
