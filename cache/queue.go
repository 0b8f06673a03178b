package cache

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/hearth-ci/hearth/filelock"
	"github.com/hearth-ci/hearth/nix"
	"github.com/hearth-ci/hearth/nix/derivation"
)

// Queue is the directory the post-build-hook fills and drainers empty. Each hook call writes one
// entry file (complete before it appears under its final name); a drainer locks the entries it
// takes, so two drainers never take the same one, and a drainer that dies releases its locks. An
// entry is removed only after its paths are in the cache.
type Queue struct {
	Dir string
	// RootsDir, when set, is a directory among the store's GC roots where each entry's outputs
	// are rooted from the moment it is queued until it is pushed: a job may run nix-store --gc,
	// and a path collected before its push would be lost to the cache.
	RootsDir string
}

const (
	entrySuffix = ".paths"
	entryHeader = "hearth-queue 1"
)

// AddHookCall queues what the nix-daemon's post-build-hook was called for, reading the hook's
// environment through getenv: OUT_PATHS, the built outputs separated by spaces, and DRV_PATH.
func (q Queue) AddHookCall(getenv func(string) string) error {
	return q.Add(strings.Fields(getenv("OUT_PATHS")), getenv("DRV_PATH"))
}

// Add queues built paths: outputs when Nix named them, else the derivation, whose outputs are
// looked up when the entry is drained (Nix 2.8 runs the hook with OUT_PATHS empty).
func (q Queue) Add(outputs []string, drv string) error {
	if len(outputs) == 0 && drv == "" {
		return nil
	}
	var b strings.Builder
	b.WriteString(entryHeader + "\n")
	for _, o := range outputs {
		b.WriteString("out " + o + "\n")
	}
	if len(outputs) == 0 {
		b.WriteString("drv " + drv + "\n")
	}
	if err := os.MkdirAll(q.Dir, 0o755); err != nil {
		return fmt.Errorf("make queue dir: %w", err)
	}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	name := fmt.Sprintf("%d-%d-%s", time.Now().UnixNano(), os.Getpid(), hex.EncodeToString(rnd[:]))
	// Rooted before the entry appears, so that no drainer sees it unrooted.
	q.root(name, outputs, drv)
	tmp := filepath.Join(q.Dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("write queue entry: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(q.Dir, name+entrySuffix)); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write queue entry: %w", err)
	}
	return nil
}

// root makes the GC roots of an entry's outputs: those Nix named, else those its derivation
// names. It is best effort: the hook must never fail a build, and an unrooted path is pushed all
// the same unless a collection comes first.
func (q Queue) root(name string, outputs []string, drv string) {
	if q.RootsDir == "" {
		return
	}
	if len(outputs) == 0 && drv != "" {
		outputs, _ = derivation.OutputsOf(drv)
	}
	if len(outputs) == 0 {
		return
	}
	dir := filepath.Join(q.RootsDir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return
	}
	for _, o := range outputs {
		_ = os.Symlink(o, filepath.Join(dir, filepath.Base(o)))
	}
}

// unroot removes the GC roots of the entry at path.
func (q Queue) unroot(path string) error {
	if q.RootsDir == "" {
		return nil
	}
	name := strings.TrimSuffix(filepath.Base(path), entrySuffix)
	if err := os.RemoveAll(filepath.Join(q.RootsDir, name)); err != nil {
		return fmt.Errorf("remove the GC roots of queue entry %s: %w", path, err)
	}
	return nil
}

// GCRoots removes the GC roots of entries that are no longer queued — what a crash between
// rooting and queueing, or between pushing and unrooting, leaves — once older than a minute (a
// hook call roots an entry a moment before it appears). It returns what it removed.
func (q Queue) GCRoots() ([]string, error) {
	if q.RootsDir == "" {
		return nil, nil
	}
	ents, err := os.ReadDir(q.RootsDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read queue roots %s: %w", q.RootsDir, err)
	}
	var removed []string
	for _, ent := range ents {
		if _, err := os.Stat(filepath.Join(q.Dir, ent.Name()+entrySuffix)); err == nil {
			continue
		}
		fi, err := ent.Info()
		if err != nil || time.Since(fi.ModTime()) < time.Minute {
			continue
		}
		if err := os.RemoveAll(filepath.Join(q.RootsDir, ent.Name())); err != nil {
			return removed, fmt.Errorf("remove queue roots: %w", err)
		}
		removed = append(removed, ent.Name())
	}
	return removed, nil
}

// Entry is one queued hook call.
type Entry struct {
	Path    string
	Outputs []string
	Drv     string
}

// Batch is a set of entries a drainer holds locked.
type Batch struct {
	Entries []Entry
	// Corrupt lists the entries that could not be read, with why; they stay in the queue for a
	// person to look at.
	Corrupt []error
	files   []*os.File
	queue   Queue
}

// maxBatch bounds how many entries one drain takes, so that a long queue (after a cache outage)
// is pushed in rounds of bounded size.
const maxBatch = 200

// Take locks and reads the entries no other drainer holds, at most maxBatch.
func (q Queue) Take(ctx context.Context) (*Batch, error) { return q.take(ctx, skipHeld) }

// TakeWaiting is Take that also waits for entries another drainer holds: when it lets them go
// still queued (its push failed), they are taken here; when it has pushed them, they are gone. A
// job's flush waits, so that what the job built is in the cache, or reported as not, when its
// script ends.
func (q Queue) TakeWaiting(ctx context.Context) (*Batch, error) { return q.take(ctx, waitForHeld) }

// held says what take does with an entry another drainer holds.
type held int

const (
	skipHeld held = iota
	waitForHeld
)

// entryPaths lists the queue's complete entries (not the temporary files of entries being
// written, which start with a dot), in name order; none when the queue dir does not exist yet.
func (q Queue) entryPaths() ([]string, error) {
	names, err := os.ReadDir(q.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read queue %s: %w", q.Dir, err)
	}
	var paths []string
	for _, n := range names {
		if strings.HasSuffix(n.Name(), entrySuffix) && !strings.HasPrefix(n.Name(), ".") {
			paths = append(paths, filepath.Join(q.Dir, n.Name()))
		}
	}
	sort.Strings(paths)
	return paths, nil
}

func (q Queue) take(ctx context.Context, ifHeld held) (*Batch, error) {
	paths, err := q.entryPaths()
	if err != nil {
		return nil, err
	}
	b := &Batch{queue: q}
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) { // another drainer finished it
				b.Corrupt = append(b.Corrupt, fmt.Errorf("queue entry %s: %w", p, err))
			}
			continue
		}
		locked, err := filelock.TryLock(f)
		if err != nil {
			f.Close()
			b.Release()
			return nil, err
		}
		if !locked {
			if ifHeld == skipHeld {
				f.Close() // another drainer has it
				continue
			}
			if err := filelock.Lock(ctx, f); err != nil {
				f.Close()
				b.Release()
				return nil, fmt.Errorf("wait for another push of queue entry %s: %w", p, err)
			}
		}
		// The entry may have been finished and removed between listing and locking.
		if _, err := os.Stat(p); err != nil {
			f.Close()
			continue
		}
		e, err := readEntry(f, p)
		if err != nil {
			f.Close()
			b.Corrupt = append(b.Corrupt, err)
			continue
		}
		b.Entries = append(b.Entries, e)
		b.files = append(b.files, f)
		if len(b.Entries) == maxBatch {
			break
		}
	}
	return b, nil
}

func readEntry(f *os.File, p string) (Entry, error) {
	e := Entry{Path: p}
	sc := bufio.NewScanner(f)
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if line == 1 {
			if text != entryHeader {
				return e, fmt.Errorf("queue entry %s is corrupt: line 1 is %q, not %q; it stays in the queue: fix or remove it", p, text, entryHeader)
			}
			continue
		}
		kind, path, ok := strings.Cut(text, " ")
		if !ok || nix.CheckStorePath(path) != nil || (kind != "out" && kind != "drv") {
			return e, fmt.Errorf("queue entry %s is corrupt: line %d is %q, not \"out PATH\" or \"drv PATH\"; it stays in the queue: fix or remove it", p, line, text)
		}
		if kind == "out" {
			e.Outputs = append(e.Outputs, path)
		} else {
			e.Drv = path
		}
	}
	if err := sc.Err(); err != nil {
		return e, fmt.Errorf("read queue entry %s: %w", p, err)
	}
	if line == 0 {
		return e, fmt.Errorf("queue entry %s is corrupt: it is empty; it stays in the queue: remove it", p)
	}
	return e, nil
}

// Done removes the batch's entries from the queue and releases them.
func (b *Batch) Done() error {
	var first error
	for i := range b.Entries {
		if err := b.finish(i); err != nil && first == nil {
			first = err
		}
	}
	b.files = nil
	return first
}

// finish removes entry i from the queue and releases it.
func (b *Batch) finish(i int) error {
	if b.files[i] == nil {
		return nil
	}
	err := os.Remove(b.Entries[i].Path)
	b.files[i].Close()
	b.files[i] = nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove queue entry: %w", err)
	}
	// Pushed: the cache has the paths now, and the store may collect them.
	return b.queue.unroot(b.Entries[i].Path)
}

// Release gives the entries not yet finished back to the queue, for a later drain.
func (b *Batch) Release() {
	for _, f := range b.files {
		if f != nil {
			f.Close()
		}
	}
	b.files = nil
}

// Waiting is an entry in the queue and when it was queued.
type Waiting struct {
	Entry
	Since time.Time
}

// Pending lists the entries waiting in the queue, oldest first; it takes no locks (for reports:
// an entry may be pushed while it is read).
func (q Queue) Pending() ([]Waiting, error) {
	paths, err := q.entryPaths()
	if err != nil {
		return nil, err
	}
	var waiting []Waiting
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			continue // pushed meanwhile
		}
		fi, serr := f.Stat()
		e, err := readEntry(f, p)
		f.Close()
		if err != nil || serr != nil {
			continue
		}
		waiting = append(waiting, Waiting{Entry: e, Since: fi.ModTime()})
	}
	sort.SliceStable(waiting, func(i, j int) bool { return waiting[i].Since.Before(waiting[j].Since) })
	return waiting, nil
}
