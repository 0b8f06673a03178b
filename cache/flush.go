package cache

import (
	"context"
	"sync"

	"github.com/hearth-ci/hearth/nixstore"
)

// Flusher pushes what the queue holds at the end of a job's script.
type Flusher struct {
	Queue  Queue
	Pusher *Pusher
}

// Flush drains the queue, waiting for the entries other drainers hold, so that when it returns
// what the job built is in the cache or reported as not. pushed, when not nil, is told of each
// path as it is uploaded, one call at a time. The error is for paths that could not be pushed
// (they stay queued) or a queue that could not be read; corrupt entries are in the result and
// stay for a person.
func (f *Flusher) Flush(ctx context.Context, pushed func(nixstore.PathInfo, Stats)) (DrainResult, error) {
	p := *f.Pusher
	if pushed != nil {
		var mu sync.Mutex
		p.Pushed = func(info nixstore.PathInfo, st Stats) {
			mu.Lock()
			defer mu.Unlock()
			pushed(info, st)
		}
	}
	return DrainWaiting(ctx, f.Queue, &p)
}

// String names the cache the flush pushes to.
func (f *Flusher) String() string { return f.Pusher.Backend.String() }
