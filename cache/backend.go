// Package cache pushes store paths to a binary cache: the Backend contract the file, s3 and attic
// backends implement (and Verifier, which those that can read themselves back do), the push of a
// closure with bounded parallelism, the queue the nix-daemon's post-build-hook fills, its drain,
// the flush at the end of a job and the watcher that drains continuously. It reports facts (what
// was pushed, what is corrupt); how a job log shows them is the driver's business.
package cache

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/hearth-ci/hearth/nix"
	"github.com/hearth-ci/hearth/nix/nar"
	"github.com/hearth-ci/hearth/nix/signing"
	"github.com/hearth-ci/hearth/nixstore"
)

// Backend is one binary cache.
type Backend interface {
	// Missing returns the store paths among paths that the cache does not hold. It is called
	// once per push with every path of the closure, and must not fail for paths that are merely
	// absent. A backend may count a path as held when it can get it elsewhere (Attic does, for
	// paths signed by its upstream caches).
	Missing(ctx context.Context, paths []nixstore.PathInfo) ([]string, error)
	// Put uploads one path. nar opens a new stream of its NAR each time it is called, so an upload
	// can be retried from the start; the stream fails at its end when the NAR differs from
	// info.NarHash or info.NarSize, and then Put must leave nothing of the path visible. Put is
	// called for a path only after every path it references is in the cache, and may be called
	// for several paths at once.
	Put(ctx context.Context, info nixstore.PathInfo, nar NarSource) (Stats, error)
	// String names the cache for people: "s3://bucket/prefix", "attic https://host/ cache".
	String() string
}

// Verifier is a Backend that can check what it holds (hearth cache verify). Callers find it by
// type assertion; a backend that cannot read its own contents back does not implement it.
type Verifier interface {
	// Verify checks the narinfos of storePaths (store paths, their base names or their hashes),
	// or of every path the cache holds when storePaths is empty: each NAR exists, its sizes and
	// hashes match, and a signature verifies with pub — or, when pub is nil, with the cache's own
	// key, when it has one. It reads every NAR it checks, so it is for people, not for every
	// push. The error is for a cache that cannot be read at all or a request it cannot answer;
	// what is wrong with single paths is in the Verification.
	Verify(ctx context.Context, pub *signing.PublicKey, storePaths []string) (Verification, error)
}

// Verification is what Verify found.
type Verification struct {
	// Checked is how many narinfos were checked.
	Checked  int
	Problems []Problem
	// Key is the key signatures were checked with; nil when they were not checked.
	Key *signing.PublicKey
}

// Problem is one thing wrong with one narinfo.
type Problem struct {
	Narinfo string
	Err     error
}

func (p Problem) Error() string { return p.Narinfo + ": " + p.Err.Error() }

// NarSource opens a fresh NAR stream of one path.
type NarSource func() (io.ReadCloser, error)

// Stats is what one Put moved.
type Stats struct {
	// NarBytes is the NAR's size; FileBytes what was stored (compressed), 0 when unknown.
	NarBytes, FileBytes int64
}

// ErrNarMismatch means a path's NAR, as read from the store now, is not the NAR the store recorded
// (the path was changed on disk, or the store's metadata is wrong). It is never uploaded.
var ErrNarMismatch = errors.New("NAR differs from the store's record")

// NarOf returns the NAR source of a store path: the NAR serialized from the file system, checked as
// it streams against the hash and size the store recorded.
func NarOf(info nixstore.PathInfo) NarSource {
	return func() (io.ReadCloser, error) {
		pr, pw := io.Pipe()
		go func() {
			h := sha256.New()
			cw := &countingWriter{w: io.MultiWriter(pw, h)}
			err := nar.Dump(cw, info.Path)
			if err == nil {
				if got := nix.FormatSHA256(h.Sum(nil)); got != info.NarHash || uint64(cw.n) != info.NarSize {
					err = fmt.Errorf("%w: %s has NAR hash %s and size %d, the store says %s and %d", ErrNarMismatch, info.Path, got, cw.n, info.NarHash, info.NarSize)
				}
			}
			pw.CloseWithError(err) // a nil error is a clean EOF
		}()
		return pr, nil
	}
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Pruner is a Backend that can remove what nobody needs any more (hearth cache prune): the file
// and S3 caches, which grow for ever otherwise. Attic collects its own garbage. Callers find it by
// type assertion.
type Pruner interface {
	Prune(ctx context.Context, req PruneRequest) (PruneSummary, error)
}

// PruneRequest says what a prune keeps: every path pushed since Before, every path of Keep (the
// queued paths, the systems deployed), and the closures of all of them.
type PruneRequest struct {
	Before time.Time
	Keep   []string
	// DryRun counts what would go and removes nothing.
	DryRun bool
}

// PruneSummary is what a prune removed (or, dry, would remove).
type PruneSummary struct {
	// Paths are the narinfos removed; NARs the NAR files (of those, and of pushes that never
	// wrote their narinfo); Bytes their sizes together. Kept counts the narinfos left.
	Paths, NARs, Kept int
	Bytes             int64
}
