package cache

import (
	"context"
	"log/slog"
	"time"
)

// Watcher pushes the queue as it fills, for the life of a host service (hearth cache watch).
type Watcher struct {
	Queue Queue
	// Open connects to the cache. It is called until it succeeds, once per Interval, so a cache
	// that is down when the watcher starts is used as soon as it is back.
	Open func(ctx context.Context) (*Pusher, error)
	// Interval is how often an empty or failing queue is looked at again.
	Interval time.Duration
	Log      *slog.Logger
}

// Run drains the queue until ctx ends, which is its only way to return. A failed push is
// logged and retried on the next round; the paths stay queued meanwhile. Each corrupt entry is
// logged once, not on every round.
func (w *Watcher) Run(ctx context.Context) error {
	var p *Pusher
	reported := map[string]bool{}
	for {
		if p == nil {
			var err error
			if p, err = w.Open(ctx); err != nil {
				w.Log.Error("cannot open the binary cache; retrying", "err", err)
			} else {
				w.Log.Info("watching the queue", "queue", w.Queue.Dir, "cache", p.Backend.String())
			}
		}
		if p != nil {
			res, err := Drain(ctx, w.Queue, p)
			for _, ce := range res.Corrupt {
				if !reported[ce.Error()] {
					reported[ce.Error()] = true
					w.Log.Error("corrupt queue entry", "err", ce)
				}
			}
			// Rejected entries leave the queue: each is reported once, by the drain that moved it.
			for _, re := range res.Rejected {
				w.Log.Error("queue entry rejected", "err", re)
			}
			switch {
			case ctx.Err() != nil:
				return nil
			case err != nil:
				w.Log.Error("push failed; the paths stay queued", "err", err)
			case res.Entries > 0:
				w.Log.Info("pushed", "entries", res.Entries, "summary", res.Summary.String())
				continue // more may have come while this round pushed
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(w.Interval):
		}
	}
}
