package filelock

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestTryLockAndRelease(t *testing.T) {
	p := filepath.Join(t.TempDir(), "a.lock")
	release, err := Acquire(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	// A second open file description is a second holder, as another process would be.
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if ok, err := TryLock(f); ok || err != nil {
		t.Fatalf("TryLock while held = %v, %v; want false, nil", ok, err)
	}
	release()
	if ok, err := TryLock(f); !ok || err != nil {
		t.Fatalf("TryLock after release = %v, %v; want true, nil", ok, err)
	}
}

func TestLockWaitsAndGivesUp(t *testing.T) {
	p := filepath.Join(t.TempDir(), "dir", "b.lock")
	release, err := Acquire(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	// Waiting ends with the context, and says what was waited for.
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	_, err = Acquire(ctx, p)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "waiting for the lock on "+p) {
		t.Fatalf("Acquire while held: %v", err)
	}
	// A waiter gets the lock once the holder lets go.
	got := make(chan error, 1)
	go func() {
		r, err := Acquire(context.Background(), p)
		if err == nil {
			r()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("Acquire returned %v while the lock was held", err)
	case <-time.After(100 * time.Millisecond):
	}
	release()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the waiter did not get the lock after its release")
	}
}
