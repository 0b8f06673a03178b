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
	"syscall"
	"time"
)

// Queue is the directory the post-build-hook fills and drainers empty. Each hook call writes one
// entry file (complete before it appears under its final name); a drainer locks the entries it
// takes, so two drainers never take the same one, and a drainer that dies releases its locks. An
// entry is removed only after its paths are in the cache.
type Queue struct {
	Dir string
}

const (
	entrySuffix = ".paths"
	entryHeader = "hearth-queue 1"
)

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
}

// Take locks and reads every entry no other drainer holds.
func (q Queue) Take() (*Batch, error) {
	names, err := os.ReadDir(q.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return &Batch{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read queue %s: %w", q.Dir, err)
	}
	sort.Slice(names, func(i, j int) bool { return names[i].Name() < names[j].Name() })
	b := &Batch{}
	for _, n := range names {
		if !strings.HasSuffix(n.Name(), entrySuffix) || strings.HasPrefix(n.Name(), ".") {
			continue
		}
		p := filepath.Join(q.Dir, n.Name())
		f, err := os.Open(p)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) { // another drainer finished it
				b.Corrupt = append(b.Corrupt, fmt.Errorf("queue entry %s: %w", p, err))
			}
			continue
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close() // another drainer has it
			continue
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
		if !ok || !strings.HasPrefix(path, "/nix/store/") || strings.ContainsAny(path, " \t") || (kind != "out" && kind != "drv") {
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
	for i, e := range b.Entries {
		if err := os.Remove(e.Path); err != nil && !errors.Is(err, fs.ErrNotExist) && first == nil {
			first = fmt.Errorf("remove queue entry: %w", err)
		}
		b.files[i].Close()
	}
	b.files = nil
	return first
}

// Release gives the batch's entries back to the queue, for a later drain.
func (b *Batch) Release() {
	for _, f := range b.files {
		f.Close()
	}
	b.files = nil
}

// Drain pushes every entry the queue holds (and no other drainer does) and removes the entries
// whose paths are now in the cache. Entries whose push failed stay queued.
func Drain(ctx context.Context, q Queue, p *Pusher) (DrainResult, error) {
	b, err := q.Take()
	if err != nil {
		return DrainResult{}, err
	}
	res := DrainResult{Entries: len(b.Entries), Corrupt: b.Corrupt}
	if len(b.Entries) == 0 {
		return res, nil
	}
	var paths []string
	seen := map[string]bool{}
	add := func(ps ...string) {
		for _, x := range ps {
			if !seen[x] {
				seen[x] = true
				paths = append(paths, x)
			}
		}
	}
	var drvs []string
	for _, e := range b.Entries {
		add(e.Outputs...)
		if e.Drv != "" {
			if _, err := os.Stat(e.Drv); err != nil {
				continue // the derivation was collected, and its outputs cannot be named any more
			}
			drvs = append(drvs, e.Drv)
		}
	}
	outs, err := p.Store.Outputs(ctx, drvs...)
	if err != nil {
		b.Release()
		return res, fmt.Errorf("outputs of the queued derivations: %w", err)
	}
	add(outs...)
	res.Summary, err = p.Push(ctx, paths, true)
	if err != nil {
		b.Release()
		return res, err
	}
	return res, b.Done()
}
