package cache

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func queueWith(t *testing.T, store *fakeStore, names ...string) (Queue, []string) {
	t.Helper()
	q := Queue{Dir: filepath.Join(t.TempDir(), "queue")}
	var paths []string
	for i, n := range names {
		p := store.add(fakePath(100+i, n))
		if err := q.Add([]string{p}, ""); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	return q, paths
}

func entries(t *testing.T, q Queue) int {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(q.Dir, "*"+entrySuffix))
	if err != nil {
		t.Fatal(err)
	}
	return len(m)
}

// When a batch fails, each entry is pushed on its own: one path that cannot be pushed keeps only
// its own entry in the queue.
func TestDrainFallsBackToEachEntry(t *testing.T) {
	store := newFakeStore()
	q, paths := queueWith(t, store, "a", "bad", "c")
	backend := newFakeBackend()
	backend.fail[paths[1]] = errors.New("refused")
	res, err := Drain(context.Background(), q, &Pusher{Backend: backend, Store: store})
	if err == nil || !strings.Contains(err.Error(), "1 of 3 queued builds were not pushed and stay queued: ") || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("error %v", err)
	}
	if res.Entries != 3 || !backend.has(paths[0]) || !backend.has(paths[2]) || backend.has(paths[1]) {
		t.Fatalf("result %+v, uploaded %v", res, backend.uploads())
	}
	if n := entries(t, q); n != 1 {
		t.Fatalf("%d entries left, want the failed one", n)
	}
	b, err := q.Take(context.Background())
	if err != nil || len(b.Entries) != 1 || b.Entries[0].Outputs[0] != paths[1] {
		t.Fatalf("left in the queue: %+v, %v", b, err)
	}
	b.Release()
}

// A long queue (after an outage) goes up in batches of maxBatch entries, each with one query of
// the store.
func TestDrainBatches(t *testing.T) {
	store := newFakeStore()
	names := make([]string, 2*maxBatch+50)
	for i := range names {
		names[i] = "p"
	}
	q, _ := queueWith(t, store, names...)
	if err := os.WriteFile(filepath.Join(q.Dir, "0-corrupt"+entrySuffix), []byte("not an entry\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	backend := newFakeBackend()
	res, err := Drain(context.Background(), q, &Pusher{Backend: backend, Store: store, Uploads: 8})
	if err != nil {
		t.Fatal(err)
	}
	if res.Entries != len(names) || res.Pushed != len(names) || entries(t, q) != 1 {
		t.Fatalf("result %+v, %d entries left, want only the corrupt one", res, entries(t, q))
	}
	if len(res.Corrupt) != 1 {
		t.Fatalf("the corrupt entry was reported %d times over 3 batches, want once: %v", len(res.Corrupt), res.Corrupt)
	}
	if store.calls != 3 || store.maxPaths != maxBatch {
		t.Fatalf("%d store queries, the largest of %d paths: want 3, at most %d", store.calls, store.maxPaths, maxBatch)
	}
}

// Queued paths collected since they were built are counted as gone and their entries finished;
// a queued derivation is pushed as its outputs, or as gone when it was collected.
func TestDrainGoneAndDerivations(t *testing.T) {
	store := newFakeStore()
	q := Queue{Dir: t.TempDir()}
	out := store.add(fakePath(1, "out"))
	drv := fakePath(2, "x.drv")
	store.drvs[drv] = []string{out}
	for _, e := range []struct {
		outs []string
		drv  string
	}{{nil, drv}, {[]string{fakePath(3, "collected")}, ""}, {nil, fakePath(4, "collected.drv")}} {
		if err := q.Add(e.outs, e.drv); err != nil {
			t.Fatal(err)
		}
	}
	backend := newFakeBackend()
	res, err := Drain(context.Background(), q, &Pusher{Backend: backend, Store: store})
	if err != nil || res.Entries != 3 || res.Pushed != 1 || res.Gone != 1 || !backend.has(out) || entries(t, q) != 0 {
		t.Fatalf("result %+v, %v, %d entries left", res, err, entries(t, q))
	}
}

// Drain leaves alone what another drainer holds; DrainWaiting waits for it: when the other lets
// the entry go still queued, it is pushed here; when the other finished it, it is gone.
func TestDrainWaitingWaitsForOtherDrainers(t *testing.T) {
	store := newFakeStore()
	for _, finished := range []bool{false, true} {
		q, paths := queueWith(t, store, "held")
		backend := newFakeBackend()
		p := &Pusher{Backend: backend, Store: store}
		other, err := q.Take(context.Background())
		if err != nil || len(other.Entries) != 1 {
			t.Fatalf("the other drainer took %+v, %v", other, err)
		}
		if res, err := Drain(context.Background(), q, p); err != nil || res.Entries != 0 {
			t.Fatalf("Drain took a held entry: %+v, %v", res, err)
		}
		type result struct {
			res DrainResult
			err error
		}
		done := make(chan result, 1)
		go func() {
			res, err := DrainWaiting(context.Background(), q, p)
			done <- result{res, err}
		}()
		select {
		case r := <-done:
			t.Fatalf("DrainWaiting returned %+v, %v while another drainer held the entry", r.res, r.err)
		case <-time.After(200 * time.Millisecond):
		}
		if finished {
			backend.hold(paths[0]) // the other pushed it
			if err := other.Done(); err != nil {
				t.Fatal(err)
			}
		} else {
			other.Release() // the other's push failed
		}
		select {
		case r := <-done:
			res := r.res
			if r.err != nil {
				t.Fatal(r.err)
			}
			if finished && (res.Entries != 0 || len(backend.uploads()) != 0) {
				t.Fatalf("after the other finished: %+v, uploads %v", res, backend.uploads())
			}
			if !finished && (res.Entries != 1 || !backend.has(paths[0])) {
				t.Fatalf("after the other let go: %+v, uploads %v", res, backend.uploads())
			}
		case <-time.After(5 * time.Second):
			t.Fatal("DrainWaiting did not return after the other drainer let go")
		}
		if n := entries(t, q); n != 0 {
			t.Fatalf("finished=%v: %d entries left", finished, n)
		}
	}
	// Waiting ends with the context, and says what it waited for.
	q, _ := queueWith(t, store, "held-forever")
	other, _ := q.Take(context.Background())
	defer other.Release()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := DrainWaiting(ctx, q, &Pusher{Backend: newFakeBackend(), Store: store})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "wait for another push of queue entry") {
		t.Fatalf("error %v", err)
	}
}

// A path whose NAR differs from the store's record is rejected: its entry, and the entries of what
// references it, leave the queue for the rejected dir; the others are pushed, and the drain
// succeeds. The next drain does not see them; a requeue puts them back.
func TestDrainRejectsMismatchedNARs(t *testing.T) {
	store := newFakeStore()
	q, paths := queueWith(t, store, "a", "poisoned", "c")
	// A fourth build that references the poisoned path.
	dependent := store.add(fakePath(200, "uses-poisoned"), paths[1])
	if err := q.Add([]string{dependent}, ""); err != nil {
		t.Fatal(err)
	}
	backend := newFakeBackend()
	backend.fail[paths[1]] = fmt.Errorf("push %s: %w", paths[1], ErrNarMismatch)
	res, err := Drain(context.Background(), q, &Pusher{Backend: backend, Store: store})
	if err != nil {
		t.Fatalf("drain: %v", err)
	}
	if len(res.Rejected) != 2 || !backend.has(paths[0]) || !backend.has(paths[2]) || backend.has(paths[1]) || backend.has(dependent) {
		t.Fatalf("rejected %v, uploaded %v", res.Rejected, backend.uploads())
	}
	if n := entries(t, q); n != 0 {
		t.Fatalf("%d entries left in the queue", n)
	}
	rejected, err := q.Rejected()
	if err != nil || len(rejected) != 2 || !strings.Contains(rejected[0].Why, "NAR differs from the store's record") {
		t.Fatalf("rejected list: %+v, %v", rejected, err)
	}
	res, err = Drain(context.Background(), q, &Pusher{Backend: backend, Store: store})
	if err != nil || res.Entries != 0 || len(res.Rejected) != 0 {
		t.Fatalf("second drain: %+v, %v", res, err)
	}
	if n, err := q.Requeue(paths[1]); n != 1 || err != nil {
		t.Fatalf("requeue: %d, %v", n, err)
	}
	if _, err := q.Requeue("/nix/store/00000000000000000000000000000000-nothing"); err == nil {
		t.Fatal("requeue of a path nothing names succeeded")
	}
	// Repaired: it goes up now.
	delete(backend.fail, paths[1])
	if res, err := Drain(context.Background(), q, &Pusher{Backend: backend, Store: store}); err != nil || res.Pushed != 1 || !backend.has(paths[1]) {
		t.Fatalf("after the requeue: %+v, %v", res, err)
	}
}
