// Package file is the binary-cache backend on a local directory: the standard layout, written with
// each file complete before it appears under its name.
package file

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/hearth-ci/hearth/cache/binarycache"
	"github.com/hearth-ci/hearth/nix/signing"
)

// New returns the cache in dir, signing with key when it is not nil.
func New(dir string, key *signing.SecretKey) (*binarycache.Cache, error) {
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("cache directory %q is not absolute", dir)
	}
	if err := os.MkdirAll(filepath.Join(dir, "nar"), 0o755); err != nil {
		return nil, fmt.Errorf("make cache directory: %w", err)
	}
	return binarycache.New(Dir(dir), key), nil
}

// Dir is a directory as binarycache.Objects.
type Dir string

func (d Dir) String() string { return "file://" + string(d) }

func (d Dir) path(key string) (string, error) {
	clean := filepath.Clean(key)
	if filepath.IsAbs(clean) || clean == "." || strings.HasPrefix(clean, "..") {
		return "", fmt.Errorf("object key %q leaves the cache directory", key)
	}
	return filepath.Join(string(d), clean), nil
}

// Exists reports whether key is a file in the directory.
func (d Dir) Exists(_ context.Context, key string) (bool, error) {
	p, err := d.path(key)
	if err != nil {
		return false, err
	}
	_, err = os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

// Put writes r to a temporary file beside key, syncs it, and renames it into place: a crash
// leaves either the whole file or none, and a narinfo written after its NAR never points at a NAR
// that is not on disk.
func (d Dir) Put(ctx context.Context, key string, r io.Reader, _ string) error {
	p, err := d.path(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(p), ".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // no-op after the rename
	if _, err := io.Copy(f, ctxReader{ctx, r}); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), p)
}

// Get opens key.
func (d Dir) Get(_ context.Context, key string) (io.ReadCloser, error) {
	p, err := d.path(key)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", key, binarycache.ErrNotExist)
	}
	return f, err
}

// ctxReader stops a copy when its context ends: a cancelled push does not finish writing a large
// NAR first.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// ListInfo returns the files in dir (relative to the cache directory) that end in suffix. The
// temporary files of unfinished writes are among them: a prune removes those of pushes that died,
// once they are old.
func (d Dir) ListInfo(_ context.Context, dir, suffix string) ([]binarycache.ObjectInfo, error) {
	p := string(d)
	if dir != "" {
		var err error
		if p, err = d.path(dir); err != nil {
			return nil, err
		}
	}
	ents, err := os.ReadDir(p)
	if errors.Is(err, fs.ErrNotExist) && dir != "" {
		return nil, nil // a cache with no NARs yet
	}
	if err != nil {
		return nil, err
	}
	var out []binarycache.ObjectInfo
	for _, e := range ents {
		if e.IsDir() || !strings.HasSuffix(e.Name(), suffix) {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue // removed meanwhile
		}
		out = append(out, binarycache.ObjectInfo{Key: dir + e.Name(), Size: fi.Size(), Modified: fi.ModTime()})
	}
	return out, nil
}

// Delete removes key's file.
func (d Dir) Delete(_ context.Context, key string) error {
	p, err := d.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
