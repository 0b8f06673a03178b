package cache

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hearth-ci/hearth/filelock"
	"github.com/hearth-ci/hearth/nixstore"
)

// Store is the Nix store a Pusher reads; nixstore.Store on a runner host.
type Store interface {
	// Closure returns the path info of paths and of everything they reference; Info that of
	// paths alone. A path that is not valid in the store is an error.
	Closure(ctx context.Context, paths []string) ([]nixstore.PathInfo, error)
	Info(ctx context.Context, paths []string) ([]nixstore.PathInfo, error)
	// Outputs returns the output paths of derivations.
	Outputs(ctx context.Context, drvs ...string) ([]string, error)
	// Has reports whether path is in the store: what was queued may have been collected since.
	Has(path string) bool
}

// Pusher pushes closures to a backend.
type Pusher struct {
	Backend Backend
	Store   Store
	// Uploads is how many paths are uploaded at once (default 4). Each upload also compresses,
	// so on a runner with few cores this bounds CPU as much as connections.
	Uploads int
	// LockDir, when set, holds the locks that keep pushers (in this process or others) from
	// uploading the same path at the same time.
	LockDir string
	// Progress, when set, is called after each path with the totals so far.
	Progress func(Progress)
	// Pushed, when set, is called after each uploaded path.
	Pushed func(info nixstore.PathInfo, st Stats)
	// Meter, when set, counts uploads and failures for the operators' metrics.
	Meter Meter
}

// Meter counts what pushes do, for the operators' metrics. Unlike Pushed, which a caller sets for
// one push, it stays with the Pusher.
type Meter interface {
	// Uploaded is called after each path uploaded.
	Uploaded(st Stats)
	// Failed is called for each upload that failed, and each question to the cache that failed.
	Failed(err error)
}

func (p *Pusher) failed(err error) {
	if p.Meter != nil {
		p.Meter.Failed(err)
	}
}

// Progress is where a push stands.
type Progress struct {
	Done, Total int   // paths uploaded (or failed) of those missing from the cache
	NarBytes    int64 // NAR bytes uploaded so far
	Elapsed     time.Duration
}

// Summary is what a push did.
type Summary struct {
	// Paths is the number of paths considered (the closure, unless it was not asked for).
	Paths int
	// Pushed were uploaded; Present were already in the cache; Gone were queued but are no
	// longer in the store.
	Pushed, Present, Gone int
	NarBytes, FileBytes   int64
	Elapsed               time.Duration
}

// add sums two summaries of pushes made one after the other.
func (s Summary) add(o Summary) Summary {
	return Summary{Paths: s.Paths + o.Paths, Pushed: s.Pushed + o.Pushed, Present: s.Present + o.Present, Gone: s.Gone + o.Gone,
		NarBytes: s.NarBytes + o.NarBytes, FileBytes: s.FileBytes + o.FileBytes, Elapsed: s.Elapsed + o.Elapsed}
}

// Scope says what a push sends of the paths it is given.
type Scope int

const (
	// Closures sends each path with everything it references, as a cache must hold it.
	Closures Scope = iota
	// PathsOnly sends the paths named, for a person who knows the rest is there.
	PathsOnly
)

// Push uploads paths (with their closures, by scope) that the cache lacks, each after the paths it
// references. It returns what it did even when it fails part-way; paths whose upload or whose
// dependencies' upload failed are not in the cache afterwards.
func (p *Pusher) Push(ctx context.Context, paths []string, scope Scope) (Summary, error) {
	start := time.Now()
	var sum Summary
	if len(paths) == 0 {
		return sum, nil
	}
	infos, gone, err := p.info(ctx, paths, scope)
	sum.Gone = len(gone)
	if err != nil {
		return sum, err
	}
	sum.Paths = len(infos)
	missing, err := p.Backend.Missing(ctx, infos)
	if err != nil {
		if ctx.Err() == nil {
			p.failed(err)
		}
		return sum, fmt.Errorf("ask %s which paths it lacks: %w", p.Backend, err)
	}
	isMissing := make(map[string]bool, len(missing))
	for _, m := range missing {
		isMissing[m] = true
	}
	var todo []nixstore.PathInfo
	for _, in := range nixstore.Order(infos) {
		if isMissing[in.Path] {
			todo = append(todo, in)
		}
	}
	sum.Present = len(infos) - len(todo)
	pushed, stats, err := p.upload(ctx, todo, start)
	sum.Pushed = pushed
	sum.NarBytes, sum.FileBytes = stats.NarBytes, stats.FileBytes
	sum.Present += len(todo) - pushed - failedCount(err)
	sum.Elapsed = time.Since(start)
	return sum, err
}

// info reads the path info, leaving out roots that are no longer in the store (a queued path may
// have been garbage-collected since it was built).
func (p *Pusher) info(ctx context.Context, paths []string, scope Scope) ([]nixstore.PathInfo, []string, error) {
	var gone, valid []string
	for _, path := range paths {
		if !p.Store.Has(path) {
			gone = append(gone, path)
			continue
		}
		valid = append(valid, path)
	}
	if len(valid) == 0 {
		return nil, gone, nil
	}
	var infos []nixstore.PathInfo
	var err error
	if scope == Closures {
		infos, err = p.Store.Closure(ctx, valid)
	} else {
		infos, err = p.Store.Info(ctx, valid)
	}
	if err != nil {
		return nil, gone, fmt.Errorf("read the store: %w", err)
	}
	return infos, gone, nil
}

// pushError collects the paths that failed.
type pushError struct {
	failed []string
	first  error
}

func (e *pushError) Error() string {
	if len(e.failed) == 1 {
		return e.first.Error()
	}
	return fmt.Sprintf("%d paths were not pushed; the first: %v", len(e.failed), e.first)
}

func (e *pushError) Unwrap() error { return e.first }

func failedCount(err error) int {
	var pe *pushError
	if errors.As(err, &pe) {
		return len(pe.failed)
	}
	return 0
}

// upload pushes todo (ordered dependencies first) with at most Uploads uploads at once; a path
// starts only when the paths it references that are also being pushed are done.
func (p *Pusher) upload(ctx context.Context, todo []nixstore.PathInfo, start time.Time) (int, Stats, error) {
	jobs := p.Uploads
	if jobs < 1 {
		jobs = 4
	}
	type result struct {
		done chan struct{}
		err  error
	}
	results := make(map[string]*result, len(todo))
	for _, in := range todo {
		results[in.Path] = &result{done: make(chan struct{})}
	}
	sem := make(chan struct{}, jobs)
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		total     Stats
		pushed    int
		done      atomic.Int64
		narDone   atomic.Int64
		pe        pushError
		cancelled = ctx.Done()
	)
	for _, in := range todo {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := results[in.Path]
			defer close(res.done)
			for _, ref := range in.References {
				if dep, ok := results[ref]; ok && ref != in.Path {
					<-dep.done
					if dep.err != nil {
						// Wrapped: a path that references a rejected one is rejected too.
						res.err = fmt.Errorf("%s: not pushed because %s, which it references, failed: %w", in.Path, ref, dep.err)
						break
					}
				}
			}
			if res.err == nil {
				select {
				case sem <- struct{}{}:
					var st Stats
					var uploaded bool
					st, uploaded, res.err = p.put(ctx, in)
					<-sem
					if res.err == nil && uploaded {
						mu.Lock()
						pushed++
						total.NarBytes += st.NarBytes
						total.FileBytes += st.FileBytes
						mu.Unlock()
						narDone.Add(st.NarBytes)
						if p.Pushed != nil {
							p.Pushed(in, st)
						}
						if p.Meter != nil {
							p.Meter.Uploaded(st)
						}
					} else if res.err != nil && ctx.Err() == nil {
						// A push stopped by its caller is not the cache's failure.
						p.failed(res.err)
					}
				case <-cancelled:
					res.err = fmt.Errorf("%s: not pushed: stopped while it waited for an upload slot: %w", in.Path, ctx.Err())
				}
			}
			if res.err != nil {
				mu.Lock()
				if pe.first == nil {
					pe.first = res.err
				}
				pe.failed = append(pe.failed, in.Path)
				mu.Unlock()
			}
			n := done.Add(1)
			if p.Progress != nil {
				p.Progress(Progress{Done: int(n), Total: len(todo), NarBytes: narDone.Load(), Elapsed: time.Since(start)})
			}
		}()
	}
	wg.Wait()
	if pe.first != nil {
		return pushed, total, &pe
	}
	return pushed, total, nil
}

// put uploads one path under its lock, if the cache still lacks it.
func (p *Pusher) put(ctx context.Context, in nixstore.PathInfo) (st Stats, uploaded bool, err error) {
	if p.LockDir != "" {
		unlock, err := lockPath(ctx, p.LockDir, in.Path)
		if err != nil {
			return Stats{}, false, err
		}
		defer unlock()
		// Another pusher may have pushed the path since this one asked: ask again, now that
		// no other can be pushing it.
		missing, err := p.Backend.Missing(ctx, []nixstore.PathInfo{in})
		if err != nil {
			return Stats{}, false, fmt.Errorf("push %s: %w", in.Path, err)
		}
		if len(missing) == 0 {
			return Stats{}, false, nil
		}
	}
	st, err = p.Backend.Put(ctx, in, NarOf(in))
	if err != nil {
		return st, false, fmt.Errorf("push %s: %w", in.Path, err)
	}
	return st, true, nil
}

// lockPath takes the lock of one store path, waiting when another pusher holds it. Paths share
// 1024 lock files by the first two characters of their hash, so the lock dir stays small however
// many paths pass through it; two paths that share a lock merely take turns.
func lockPath(ctx context.Context, dir, path string) (unlock func(), err error) {
	hash := filepath.Base(path)
	if len(hash) > 2 {
		hash = hash[:2]
	}
	unlock, err = filelock.Acquire(ctx, filepath.Join(dir, hash+".lock"))
	if err != nil {
		return nil, fmt.Errorf("wait for another push of %s: %w", path, err)
	}
	return unlock, nil
}
