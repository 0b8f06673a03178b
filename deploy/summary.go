package deploy

import (
	"context"
	"fmt"
	"path"
	"sort"
	"strings"

	"github.com/hearth-ci/hearth/bytesize"
	"github.com/hearth-ci/hearth/nix"
	"github.com/hearth-ci/hearth/nixstore"
)

// Diff is how a new system's closure differs from the running one's.
type Diff struct {
	Added, Removed           []nixstore.PathInfo
	OldSize, NewSize         int64
	AddedBytes, RemovedBytes int64
}

// diffClosures compares two closures by store path.
func diffClosures(old, new []nixstore.PathInfo) Diff {
	var d Diff
	inOld := map[string]bool{}
	for _, in := range old {
		inOld[in.Path] = true
		d.OldSize += int64(in.NarSize)
	}
	inNew := map[string]bool{}
	for _, in := range new {
		inNew[in.Path] = true
		d.NewSize += int64(in.NarSize)
		if !inOld[in.Path] {
			d.Added = append(d.Added, in)
			d.AddedBytes += int64(in.NarSize)
		}
	}
	for _, in := range old {
		if !inNew[in.Path] {
			d.Removed = append(d.Removed, in)
			d.RemovedBytes += int64(in.NarSize)
		}
	}
	byName := func(s []nixstore.PathInfo) {
		sort.Slice(s, func(i, j int) bool { return name(s[i].Path) < name(s[j].Path) })
	}
	byName(d.Added)
	byName(d.Removed)
	return d
}

// name is a store path's name without its hash, as diffs are read.
func name(p string) string {
	base := path.Base(p)
	if _, rest, ok := strings.Cut(base, "-"); ok {
		return rest
	}
	return base
}

// listed is at most max names of paths.
func listed(infos []nixstore.PathInfo, max int) string {
	var names []string
	for i, in := range infos {
		if i == max {
			names = append(names, fmt.Sprintf("and %d more", len(infos)-max))
			break
		}
		names = append(names, name(in.Path))
	}
	return strings.Join(names, ", ")
}

// summarise logs what the deploy changes in the target's closure, before anything is switched.
func (s *session) summarise(ctx context.Context, closure []nixstore.PathInfo) error {
	var old []nixstore.PathInfo
	if cur := s.before["current"]; cur != "" && nix.CheckStorePath(cur) == nil {
		out, err := s.c.output(ctx, s.w.command("closure", cur), nil)
		if err != nil {
			return fmt.Errorf("read the closure of the running system on %s: %w", s.name, err)
		}
		if old, err = nixstore.ParseJSON([]byte(out)); err != nil {
			return fmt.Errorf("read the closure of the running system on %s: %w", s.name, err)
		}
	}
	d := diffClosures(old, closure)
	s.log("closure: %d paths added (%s), %d removed (%s); %s → %s", len(d.Added), bytesize.Format(d.AddedBytes), len(d.Removed), bytesize.Format(d.RemovedBytes),
		bytesize.Format(d.OldSize), bytesize.Format(d.NewSize))
	if len(d.Added) > 0 {
		s.log("added: %s", listed(d.Added, 20))
	}
	if len(d.Removed) > 0 {
		s.log("removed: %s", listed(d.Removed, 20))
	}
	return nil
}
