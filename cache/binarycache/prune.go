package binarycache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/hearth-ci/hearth/cache"
	"github.com/hearth-ci/hearth/nix"
	"github.com/hearth-ci/hearth/nix/narinfo"
)

// ObjectInfo is one listed object: its key, size and when it was last written.
type ObjectInfo struct {
	Key      string
	Size     int64
	Modified time.Time
}

// Prune removes what nobody needs any more: every path whose narinfo was written before
// req.Before, unless it is in the closure (by the narinfos' references) of a path written since,
// or of one of req.Keep; and every NAR no narinfo left names, once it too is older than
// req.Before. A narinfo goes before its NAR, so the cache never shows a path whose NAR is gone.
// It does not stop pushes: a push that runs meanwhile may find a dependency present that the
// prune then removes (the path's closure is incomplete in the cache until a later push of a
// closure that needs it puts it back), and a NAR a push rewrites after the NARs were listed may
// be removed under it. Removals run several at once, to keep that time short.
func (c *Cache) Prune(ctx context.Context, req cache.PruneRequest) (cache.PruneSummary, error) {
	var sum cache.PruneSummary
	listed, err := c.objects.ListInfo(ctx, "", ".narinfo")
	if err != nil {
		return sum, fmt.Errorf("list the narinfos of %s: %w", c, err)
	}
	infos := make([]*narinfo.NarInfo, len(listed))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(32)
	for i, o := range listed {
		g.Go(func() error {
			r, err := c.objects.Get(gctx, o.Key)
			if errors.Is(err, ErrNotExist) {
				return nil // removed meanwhile (another prune)
			}
			if err != nil {
				return fmt.Errorf("read %s: %w", o.Key, err)
			}
			defer r.Close()
			ni, err := narinfo.Parse(io.LimitReader(r, 1<<20))
			if err != nil {
				return fmt.Errorf("%s: %w", o.Key, err)
			}
			infos[i] = ni
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return sum, err
	}

	// What is live: the recent paths, the ones asked to be kept, and everything they reference.
	byHash := make(map[string]int, len(listed))
	for i, o := range listed {
		byHash[strings.TrimSuffix(o.Key, ".narinfo")] = i
	}
	live := make([]bool, len(listed))
	var todo []int
	mark := func(i int) {
		if !live[i] {
			live[i] = true
			todo = append(todo, i)
		}
	}
	for i, o := range listed {
		if !o.Modified.Before(req.Before) {
			mark(i)
		}
	}
	for _, p := range req.Keep {
		if h, err := nix.HashPart(p); err == nil {
			if i, ok := byHash[h]; ok {
				mark(i)
			}
		}
	}
	for len(todo) > 0 {
		i := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		if infos[i] == nil {
			continue
		}
		for _, ref := range infos[i].References {
			h, _, _ := strings.Cut(ref, "-")
			if j, ok := byHash[h]; ok {
				mark(j)
			}
		}
	}

	named := map[string]bool{} // NARs a live narinfo names
	var doomed []string
	for i, o := range listed {
		switch {
		case infos[i] == nil: // gone already
		case live[i]:
			named[infos[i].URL] = true
			sum.Kept++
		default:
			sum.Paths++
			sum.Bytes += o.Size
			doomed = append(doomed, o.Key)
		}
	}
	if err := c.remove(ctx, doomed, req.DryRun); err != nil {
		return sum, err
	}
	// Then the NARs no live narinfo names: those of the paths just removed, and those of pushes
	// that never wrote their narinfo.
	nars, err := c.objects.ListInfo(ctx, "nar/", "")
	if err != nil {
		return sum, fmt.Errorf("list the NARs of %s: %w", c, err)
	}
	doomed = doomed[:0]
	for _, o := range nars {
		if named[o.Key] || !o.Modified.Before(req.Before) || path.Dir(o.Key) != "nar" {
			continue
		}
		sum.NARs++
		sum.Bytes += o.Size
		doomed = append(doomed, o.Key)
	}
	return sum, c.remove(ctx, doomed, req.DryRun)
}

// remove deletes keys, several at once.
func (c *Cache) remove(ctx context.Context, keys []string, dry bool) error {
	if dry {
		return nil
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for _, k := range keys {
		g.Go(func() error {
			if err := c.objects.Delete(gctx, k); err != nil {
				return fmt.Errorf("delete %s: %w", k, err)
			}
			return nil
		})
	}
	return g.Wait()
}
