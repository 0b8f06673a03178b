package cache

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"
)

// A queued path whose NAR, read from the store, differs from what the store recorded (a store
// path rewritten after it was registered: a poisoned path) can never be pushed. Retrying it would
// fail every later push — and, with [cache] required, every later job. Its entry is moved out of
// the queue into the rejected dir instead, with why, for the operator to look at: never retried,
// never in the way of the others, until it is requeued after a repair.

// rejectedDir is the queue's subdirectory of rejected entries.
const rejectedDir = "rejected"

// whySuffix names the file beside a rejected entry that says why it was rejected.
const whySuffix = ".why"

// reject moves entry i of the batch to the rejected dir, with why.
func (b *Batch) reject(i int, why error) error {
	if b.files[i] == nil {
		return nil
	}
	e := b.Entries[i]
	dir := filepath.Join(filepath.Dir(e.Path), rejectedDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("make the rejected dir: %w", err)
	}
	dst := filepath.Join(dir, filepath.Base(e.Path))
	// The reason first: a rejected entry never appears without it.
	if err := os.WriteFile(strings.TrimSuffix(dst, entrySuffix)+whySuffix, []byte(time.Now().UTC().Format(time.RFC3339)+" "+why.Error()+"\n"), 0o644); err != nil {
		return fmt.Errorf("reject queue entry: %w", err)
	}
	err := os.Rename(e.Path, dst)
	b.files[i].Close()
	b.files[i] = nil
	if err != nil {
		return fmt.Errorf("reject queue entry: %w", err)
	}
	// A rejected path is not kept alive for a push that will not come: a repair rebuilds it.
	return b.queue.unroot(e.Path)
}

// Rejected is one rejected queue entry.
type Rejected struct {
	Entry
	// Why is when and why it was rejected.
	Why string
}

// Rejected lists the rejected entries, oldest first.
func (q Queue) Rejected() ([]Rejected, error) {
	dir := filepath.Join(q.Dir, rejectedDir)
	names, err := filepath.Glob(filepath.Join(dir, "*"+entrySuffix))
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	var out []Rejected
	for _, p := range names {
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		e, err := readEntry(f, p)
		f.Close()
		if err != nil {
			return nil, err
		}
		why, _ := os.ReadFile(strings.TrimSuffix(p, entrySuffix) + whySuffix)
		out = append(out, Rejected{Entry: e, Why: strings.TrimSpace(string(why))})
	}
	return out, nil
}

// Requeue puts the rejected entries that name path (an output, or the derivation) back in the
// queue, for the next drain to push; it returns how many it put back.
func (q Queue) Requeue(path string) (int, error) {
	rejected, err := q.Rejected()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, r := range rejected {
		if r.Drv != path && !slices.Contains(r.Outputs, path) {
			continue
		}
		if err := os.Rename(r.Path, filepath.Join(q.Dir, filepath.Base(r.Path))); err != nil {
			return n, fmt.Errorf("requeue %s: %w", r.Path, err)
		}
		if err := os.Remove(strings.TrimSuffix(r.Path, entrySuffix) + whySuffix); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return n, err
		}
		n++
	}
	if n == 0 {
		return 0, fmt.Errorf("no rejected queue entry names %s (hearth cache rejected lists them)", path)
	}
	return n, nil
}
