package executor

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// A job's driver calls leave evidence on the host that gc reads, rather than asking the job's
// agent, whose socket the job itself can replace with a server that says what it likes: each call
// holds a shared lock on the job's activity file while it runs, and stamps the file's time when it
// starts and ends.

func (e *Executor) activityFile(id string) string { return filepath.Join(e.jobDir(id), "activity") }

// active marks a driver call on job id as running until the returned function is called.
func (e *Executor) active(id string) (done func()) {
	path := e.activityFile(id)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		// No state dir (prepare never ran): there is nothing for gc to judge either.
		return func() {}
	}
	syscall.Flock(int(f.Fd()), syscall.LOCK_SH)
	stamp := func() {
		now := time.Now()
		os.Chtimes(path, now, now)
	}
	stamp()
	return func() {
		stamp()
		f.Close()
	}
}

// activity reports whether a driver call on job id is running, and when the last one started or
// ended (the zero time when none left a trace).
func (e *Executor) activity(id string) (running bool, last time.Time) {
	path := e.activityFile(id)
	f, err := os.Open(path)
	if err != nil {
		return false, time.Time{}
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil {
		last = fi.ModTime()
	}
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return true, last
	}
	return false, last
}
