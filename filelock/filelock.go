// Package filelock takes the advisory locks (flock) hearth processes on one host coordinate with:
// pushers that must not upload one path twice at once, drainers that must not take one queue
// entry twice, prepares that must not remap one image twice. A lock is held by an open file and
// released when the file is closed or its holder dies, so a crash never leaves a lock behind.
package filelock

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// poll is how often a waiting Lock tries again. flock cannot be interrupted by a context; polling
// keeps waits cancellable, and adds at most 50 ms to a wait that lasts as long as the holder's
// work (a NAR upload, an image pull).
const poll = 50 * time.Millisecond

// TryLock takes f's exclusive lock if no other holder has it, and reports whether it did.
func TryLock(f *os.File) (bool, error) {
	err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, syscall.EWOULDBLOCK):
		return false, nil
	}
	return false, fmt.Errorf("lock %s: %w", f.Name(), err)
}

// Lock takes f's exclusive lock, waiting while another holder has it, until ctx ends.
func Lock(ctx context.Context, f *os.File) error {
	for {
		ok, err := TryLock(f)
		if ok || err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("gave up waiting for the lock on %s, which another hearth process holds: %w", f.Name(), ctx.Err())
		case <-time.After(poll):
		}
	}
}

// Acquire opens the lock file at path, making it and its directory when they are missing, and
// takes its lock as Lock does. The returned function releases it.
func Acquire(ctx context.Context, path string) (release func(), err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("make lock dir: %w", err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	if err := Lock(ctx, f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}
