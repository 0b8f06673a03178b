package cache

import (
	"context"
	"errors"
	"fmt"
)

// DrainResult is what one drain did.
type DrainResult struct {
	Summary
	// Entries is how many queue entries were taken.
	Entries int
	// Corrupt lists entries that could not be read; they stay queued.
	Corrupt []error
	// Rejected lists entries moved out of the queue because a path of theirs differs from the
	// store's record (see rejected.go).
	Rejected []error
}

// Drain pushes the entries the queue holds that no other drainer holds, a batch at a time, and
// removes each entry once its paths are in the cache. When a push fails, each entry is pushed on
// its own, so that one path that cannot be pushed holds back only its own entry; those stay queued.
func Drain(ctx context.Context, q Queue, p *Pusher) (DrainResult, error) {
	return drain(ctx, p, q.Take)
}

// DrainWaiting is Drain that also waits for the entries other drainers hold (see TakeWaiting).
func DrainWaiting(ctx context.Context, q Queue, p *Pusher) (DrainResult, error) {
	return drain(ctx, p, q.TakeWaiting)
}

func drain(ctx context.Context, p *Pusher, take func(context.Context) (*Batch, error)) (DrainResult, error) {
	var res DrainResult
	seen := map[string]bool{}
	for {
		b, err := take(ctx)
		if err != nil {
			return res, err
		}
		// Corrupt entries stay in the queue, so every batch reads them again: report each once.
		for _, c := range b.Corrupt {
			if !seen[c.Error()] {
				seen[c.Error()] = true
				res.Corrupt = append(res.Corrupt, c)
			}
		}
		if len(b.Entries) == 0 {
			return res, nil
		}
		res.Entries += len(b.Entries)
		sum, rejected, err := drainBatch(ctx, b, p)
		res.Summary = res.Summary.add(sum)
		res.Rejected = append(res.Rejected, rejected...)
		b.Release()
		if err != nil {
			return res, err
		}
		if len(b.Entries) < maxBatch {
			return res, nil
		}
	}
}

func drainBatch(ctx context.Context, b *Batch, p *Pusher) (Summary, []error, error) {
	paths, err := EntryPaths(ctx, p.Store, b.Entries...)
	if err != nil {
		return Summary{}, nil, err
	}
	sum, err := p.Push(ctx, paths, Closures)
	if err == nil {
		return sum, nil, b.Done()
	}
	if ctx.Err() != nil || (len(b.Entries) == 1 && !errors.Is(err, ErrNarMismatch)) {
		return sum, nil, err
	}
	var first error
	var rejected []error
	failed := 0
	for i, e := range b.Entries {
		paths, err := EntryPaths(ctx, p.Store, e)
		if err == nil {
			var s Summary
			s, err = p.Push(ctx, paths, Closures)
			sum = sum.add(s)
		}
		switch {
		case err == nil:
			if err := b.finish(i); err != nil {
				return sum, rejected, err
			}
		case errors.Is(err, ErrNarMismatch):
			if rerr := b.reject(i, err); rerr != nil {
				return sum, rejected, rerr
			}
			rejected = append(rejected, fmt.Errorf("rejected, and moved out of the queue (hearth cache rejected lists it): %w", err))
		default:
			if first == nil {
				first = err
			}
			failed++
		}
	}
	if failed == 0 {
		return sum, rejected, nil
	}
	return sum, rejected, fmt.Errorf("%d of %d queued builds were not pushed and stay queued: %w", failed, len(b.Entries), first)
}

// EntryPaths lists the paths entries name: their outputs, and the outputs of their derivations
// (of those still in the store).
func EntryPaths(ctx context.Context, store Store, entries ...Entry) ([]string, error) {
	var paths, drvs []string
	seen := map[string]bool{}
	add := func(ps ...string) {
		for _, x := range ps {
			if !seen[x] {
				seen[x] = true
				paths = append(paths, x)
			}
		}
	}
	for _, e := range entries {
		add(e.Outputs...)
		if e.Drv != "" {
			if !store.Has(e.Drv) {
				continue // the derivation was collected, and its outputs cannot be named any more
			}
			drvs = append(drvs, e.Drv)
		}
	}
	outs, err := store.Outputs(ctx, drvs...)
	if err != nil {
		return nil, fmt.Errorf("outputs of the queued derivations: %w", err)
	}
	add(outs...)
	return paths, nil
}
