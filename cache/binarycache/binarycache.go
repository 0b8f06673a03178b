// Package binarycache writes and checks the standard Nix binary-cache layout — nix-cache-info,
// <hash>.narinfo and nar/<hash>.nar.zst — on any store of objects. The file and s3 backends are
// this layout over a directory and over a bucket.
package binarycache

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sync/errgroup"

	"github.com/hearth-ci/hearth/cache"
	"github.com/hearth-ci/hearth/nix"
	"github.com/hearth-ci/hearth/nix/nixbase32"
	"github.com/hearth-ci/hearth/nix/signing"
	"github.com/hearth-ci/hearth/nixstore"
)

// Objects is a flat store of named objects.
type Objects interface {
	// Exists reports whether key is there. Called for every path of a pushed closure.
	Exists(ctx context.Context, key string) (bool, error)
	// Put stores what r yields under key. The object appears whole or not at all: when r fails,
	// nothing is left under key. Called concurrently.
	Put(ctx context.Context, key string, r io.Reader, contentType string) error
	// Get opens key; an absent key is an error that satisfies errors.Is(err, ErrNotExist).
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	// ListInfo returns the objects directly in dir ("" or "nar/") whose keys end in suffix, with
	// their sizes and when they were written.
	ListInfo(ctx context.Context, dir, suffix string) ([]ObjectInfo, error)
	// Delete removes key; an absent key is no error.
	Delete(ctx context.Context, key string) error
	String() string
}

// ErrNotExist is what Objects.Get returns for an absent key.
var ErrNotExist = errors.New("no such object")

// CacheInfo is the nix-cache-info hearth writes when a cache has none.
const CacheInfo = "StoreDir: " + nix.StoreDir + "\nWantMassQuery: 1\nPriority: 40\n"

// Cache is a binary cache on Objects. It implements cache.Backend.
type Cache struct {
	objects Objects
	key     *signing.SecretKey
	// infoMu guards hasInfo: nix-cache-info is checked until it is known to exist, so that one
	// failed check (a 503, a blip) does not fail every later push of a long-lived watcher.
	infoMu  sync.Mutex
	hasInfo bool
}

// New returns the cache on objects; key, when not nil, signs every narinfo.
func New(objects Objects, key *signing.SecretKey) *Cache {
	return &Cache{objects: objects, key: key}
}

func (c *Cache) String() string { return c.objects.String() }

// Missing asks for each path's narinfo, several at once.
func (c *Cache) Missing(ctx context.Context, paths []nixstore.PathInfo) ([]string, error) {
	present := make([]bool, len(paths))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(32)
	for i, p := range paths {
		g.Go(func() error {
			key, err := narinfoKey(p.Path)
			if err != nil {
				return err
			}
			ok, err := c.objects.Exists(gctx, key)
			if err != nil {
				return fmt.Errorf("look for %s: %w", key, err)
			}
			present[i] = ok
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	var missing []string
	for i, p := range paths {
		if !present[i] {
			missing = append(missing, p.Path)
		}
	}
	return missing, nil
}

func narinfoKey(storePath string) (string, error) {
	h, err := nix.HashPart(storePath)
	if err != nil {
		return "", err
	}
	return h + ".narinfo", nil
}

// encoders is how many goroutines compress one NAR: a large path then uses both cores.
var encoders = min(runtime.GOMAXPROCS(0), 4)

// Put compresses the NAR with zstd into nar/<NarHash>.nar.zst — named by the NAR's hash, known
// before the upload, so identical NARs share an object — and then writes the narinfo, signed. The
// narinfo is written last: a cache never shows a path whose NAR is not complete.
func (c *Cache) Put(ctx context.Context, info nixstore.PathInfo, src cache.NarSource) (cache.Stats, error) {
	var st cache.Stats
	if err := c.ensureCacheInfo(ctx); err != nil {
		return st, err
	}
	niKey, err := narinfoKey(info.Path)
	if err != nil {
		return st, err
	}
	narHash, err := nix.ParseSHA256(info.NarHash)
	if err != nil {
		return st, fmt.Errorf("NAR hash of %s: %w", info.Path, err)
	}
	narKey := "nar/" + nixbase32.EncodeToString(narHash) + ".nar.zst"

	nar, err := src()
	if err != nil {
		return st, err
	}
	defer nar.Close()
	pr, pw := io.Pipe()
	fileHash := sha256.New()
	file := &counter{}
	var compressErr error
	compressed := make(chan struct{})
	go func() {
		defer close(compressed)
		zw, err := zstd.NewWriter(io.MultiWriter(pw, fileHash, file), zstd.WithEncoderConcurrency(encoders), zstd.WithEncoderLevel(zstd.SpeedDefault))
		if err != nil {
			compressErr = err
			pw.CloseWithError(err)
			return
		}
		_, err = io.Copy(zw, nar)
		if cerr := zw.Close(); err == nil {
			err = cerr
		}
		compressErr = err
		pw.CloseWithError(err)
	}()
	err = c.objects.Put(ctx, narKey, pr, "application/x-nix-nar")
	// Whatever Put did, the compressor must not stay blocked on the pipe; and the hashes are
	// complete only once it has finished.
	pr.CloseWithError(errors.New("the upload stopped reading"))
	<-compressed
	if err != nil {
		return st, fmt.Errorf("upload %s: %w", narKey, err)
	}
	if compressErr != nil {
		return st, fmt.Errorf("upload %s: %w", narKey, compressErr)
	}
	ni := info.NarInfo()
	ni.URL, ni.Compression = narKey, "zstd"
	ni.FileHash, ni.FileSize = nix.FormatSHA256(fileHash.Sum(nil)), uint64(file.n)
	if c.key != nil {
		fp, err := ni.Fingerprint()
		if err != nil {
			return st, err
		}
		ni.Sigs = append(ni.Sigs, c.key.Sign(fp))
	}
	if err := c.objects.Put(ctx, niKey, strings.NewReader(ni.String()), "text/x-nix-narinfo"); err != nil {
		return st, fmt.Errorf("upload %s: %w", niKey, err)
	}
	return cache.Stats{NarBytes: int64(info.NarSize), FileBytes: file.n}, nil
}

func (c *Cache) ensureCacheInfo(ctx context.Context) error {
	c.infoMu.Lock()
	defer c.infoMu.Unlock()
	if c.hasInfo {
		return nil
	}
	ok, err := c.objects.Exists(ctx, "nix-cache-info")
	if err != nil {
		return fmt.Errorf("look for nix-cache-info: %w", err)
	}
	if !ok {
		if err := c.objects.Put(ctx, "nix-cache-info", strings.NewReader(CacheInfo), "text/x-nix-cache-info"); err != nil {
			return fmt.Errorf("write nix-cache-info: %w", err)
		}
	}
	c.hasInfo = true
	return nil
}

type counter struct{ n int64 }

func (c *counter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}
