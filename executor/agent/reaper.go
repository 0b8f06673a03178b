package agent

import (
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// reaper waits for every child of the process, including orphans reparented to PID 1, and hands
// the exit status of the ones it started to whoever is waiting. Starting and reaping happen under
// one lock, so a child that exits at once cannot be reaped before it is registered.
type reaper struct {
	mu      sync.Mutex
	waiting map[int]chan syscall.WaitStatus
}

var (
	theReaper     *reaper
	theReaperOnce sync.Once
)

// processReaper returns the process's one reaper: waiting for any child is process-wide, so two
// reapers would steal each other's children.
func processReaper() *reaper {
	theReaperOnce.Do(func() {
		theReaper = &reaper{waiting: map[int]chan syscall.WaitStatus{}}
		ch := make(chan os.Signal, 16)
		signal.Notify(ch, syscall.SIGCHLD)
		go func() {
			for range ch {
				theReaper.reap()
			}
		}()
	})
	return theReaper
}

func (r *reaper) start(path string, argv []string, attr *syscall.ProcAttr) (int, <-chan syscall.WaitStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pid, err := syscall.ForkExec(path, argv, attr)
	if err != nil {
		return 0, nil, err
	}
	ch := make(chan syscall.WaitStatus, 1)
	r.waiting[pid] = ch
	return pid, ch, nil
}

func (r *reaper) reap() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		if ch, ok := r.waiting[pid]; ok {
			ch <- ws
			delete(r.waiting, pid)
		}
	}
}
