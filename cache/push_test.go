package cache

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// A closure goes up dependencies first; a path whose upload fails holds back what references it,
// and nothing else; what the cache holds is not sent again.
func TestPushOrderAndFailures(t *testing.T) {
	store := newFakeStore()
	a := store.add(fakePath(1, "a"))
	b := store.add(fakePath(2, "b"), a)
	c := store.add(fakePath(3, "c"), b, a)
	d := store.add(fakePath(4, "d"), a)
	held := store.add(fakePath(5, "held"))
	top := store.add(fakePath(6, "top"), held)
	backend := newFakeBackend()
	backend.held[held] = true
	broken := errors.New("the server answered 500")
	backend.fail[b] = broken
	m := &fakeMeter{}
	p := &Pusher{Backend: backend, Store: store, Uploads: 3, Meter: m}

	sum, err := p.Push(context.Background(), []string{c, d, top}, Closures)
	if !errors.Is(err, broken) || !strings.Contains(err.Error(), "2 paths were not pushed") {
		t.Fatalf("error %v, want the failure of %s and of %s, which references it", err, b, c)
	}
	// The meter counts uploads, and the one upload that failed: c, never tried, is not a failure
	// of the cache.
	if m.uploaded != 3 || m.bytes != 300 || len(m.failed) != 1 || !errors.Is(m.failed[0], broken) {
		t.Fatalf("meter: %d uploads of %d bytes, failures %v", m.uploaded, m.bytes, m.failed)
	}
	up := backend.uploads()
	if len(up) != 3 || slices.Index(up, a) > slices.Index(up, d) || backend.has(b) || backend.has(c) || !backend.has(d) || !backend.has(top) {
		t.Fatalf("uploaded %v: want %s before %s, and %s; not %s or %s", up, a, d, top, b, c)
	}
	if sum.Paths != 6 || sum.Pushed != 3 || sum.Present != 1 || sum.NarBytes != 300 || sum.FileBytes != 150 {
		t.Fatalf("summary %+v", sum)
	}

	// Once b can be pushed, a second push sends b and c only.
	delete(backend.fail, b)
	sum, err = p.Push(context.Background(), []string{c, d, top}, Closures)
	if err != nil || sum.Pushed != 2 || sum.Present != 4 {
		t.Fatalf("second push: %+v, %v", sum, err)
	}
	if up := backend.uploads(); up[3] != b || up[4] != c {
		t.Fatalf("uploads %v: want %s, then %s", up, b, c)
	}
}

func TestPushPathsOnlyAndGone(t *testing.T) {
	store := newFakeStore()
	a := store.add(fakePath(1, "a"))
	b := store.add(fakePath(2, "b"), a)
	backend := newFakeBackend()
	backend.held[a] = true
	p := &Pusher{Backend: backend, Store: store}
	gone := fakePath(9, "collected")
	sum, err := p.Push(context.Background(), []string{b, gone}, PathsOnly)
	if err != nil || sum.Paths != 1 || sum.Pushed != 1 || sum.Gone != 1 {
		t.Fatalf("push: %+v, %v", sum, err)
	}
	if !strings.Contains(sum.String(), "1 no longer in the store") {
		t.Fatalf("summary %q does not say a path was gone", sum.String())
	}
}

// A cancelled push says what it was waiting for, not only "context canceled".
func TestPushCancelled(t *testing.T) {
	store := newFakeStore()
	a := store.add(fakePath(1, "a"))
	b := store.add(fakePath(2, "b"))
	backend := newFakeBackend()
	backend.started = make(chan string, 2)
	backend.release = make(chan struct{})
	backend.stubborn = true // the upload in flight ends after the cancel has been seen
	p := &Pusher{Backend: backend, Store: store, Uploads: 1}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := p.Push(ctx, []string{a, b}, Closures)
		done <- err
	}()
	running := <-backend.started // one upload is running; the other waits for its slot
	cancel()
	time.Sleep(50 * time.Millisecond)
	close(backend.release)
	err := <-done
	waiting := a
	if running == a {
		waiting = b
	}
	want := waiting + ": not pushed: stopped while it waited for an upload slot: context canceled"
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q: want it to say %q", err, want)
	}
}

type fakeMeter struct {
	mu       sync.Mutex
	uploaded int
	bytes    int64
	failed   []error
}

func (m *fakeMeter) Uploaded(st Stats) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.uploaded++
	m.bytes += st.NarBytes
}

func (m *fakeMeter) Failed(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.failed = append(m.failed, err)
}
