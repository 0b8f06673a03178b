package binarycache

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"

	"github.com/klauspost/compress/zstd"

	"github.com/hearth-ci/hearth/cache"
	"github.com/hearth-ci/hearth/nix"
	"github.com/hearth-ci/hearth/nix/narinfo"
	"github.com/hearth-ci/hearth/nix/signing"
)

var _ cache.Verifier = (*Cache)(nil)

// Verify checks the narinfos of storePaths, or all the cache lists when there are none: the NAR
// exists, its compressed size and hash and its NAR size and hash match, and a signature verifies
// with pub, or with the public half of the cache's signing key when pub is nil. A name that is no
// store path is a problem of its own.
func (c *Cache) Verify(ctx context.Context, pub *signing.PublicKey, storePaths []string) (cache.Verification, error) {
	var v cache.Verification
	if pub == nil && c.key != nil {
		k := c.key.Public()
		pub = &k
	}
	v.Key = pub
	var keys []string
	for _, p := range storePaths {
		h, err := nix.HashPartOf(p)
		if err != nil {
			v.Problems = append(v.Problems, cache.Problem{Narinfo: p, Err: err})
			v.Checked++
			continue
		}
		keys = append(keys, h+".narinfo")
	}
	if len(storePaths) == 0 {
		objs, err := c.objects.ListInfo(ctx, "", ".narinfo")
		if err != nil {
			return v, fmt.Errorf("list narinfos: %w", err)
		}
		for _, o := range objs {
			keys = append(keys, o.Key)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := c.verifyOne(ctx, k, pub); err != nil {
			v.Problems = append(v.Problems, cache.Problem{Narinfo: k, Err: err})
		}
	}
	v.Checked += len(keys)
	return v, nil
}

func (c *Cache) verifyOne(ctx context.Context, key string, pub *signing.PublicKey) error {
	r, err := c.objects.Get(ctx, key)
	if err != nil {
		return err
	}
	ni, err := narinfo.Parse(r)
	r.Close()
	if err != nil {
		return err
	}
	if want, _ := narinfoKey(ni.StorePath); want != path.Base(key) {
		return fmt.Errorf("describes %s, whose narinfo would be %s", ni.StorePath, want)
	}
	if pub != nil {
		fp, err := ni.Fingerprint()
		if err != nil {
			return err
		}
		ok := false
		for _, s := range ni.Sigs {
			ok = ok || pub.Verify(fp, s)
		}
		if !ok {
			return fmt.Errorf("no signature by %s verifies", pub.Name)
		}
	}
	nar, err := c.objects.Get(ctx, ni.URL)
	if errors.Is(err, ErrNotExist) {
		return fmt.Errorf("its NAR %s is missing", ni.URL)
	}
	if err != nil {
		return err
	}
	defer nar.Close()
	fileHash, narHash := sha256.New(), sha256.New()
	file := &counter{}
	body := io.TeeReader(nar, io.MultiWriter(fileHash, file))
	var plain io.Reader
	switch ni.Compression {
	case "zstd":
		zr, err := zstd.NewReader(body)
		if err != nil {
			return err
		}
		defer zr.Close()
		plain = zr
	case "none":
		plain = body
	default:
		return fmt.Errorf("compression %q: hearth verifies zstd and none only", ni.Compression)
	}
	n, err := io.Copy(narHash, plain)
	if err != nil {
		return fmt.Errorf("read NAR %s: %w", ni.URL, err)
	}
	if _, err := io.Copy(io.Discard, body); err != nil {
		return fmt.Errorf("read NAR %s: %w", ni.URL, err)
	}
	if ni.FileSize != 0 && uint64(file.n) != ni.FileSize {
		return fmt.Errorf("NAR file %s has %d bytes, the narinfo says %d", ni.URL, file.n, ni.FileSize)
	}
	if got := nix.FormatSHA256(fileHash.Sum(nil)); ni.FileHash != "" && got != ni.FileHash {
		return fmt.Errorf("NAR file %s has hash %s, the narinfo says %s", ni.URL, got, ni.FileHash)
	}
	if uint64(n) != ni.NarSize {
		return fmt.Errorf("NAR %s is %d bytes uncompressed, the narinfo says %d", ni.URL, n, ni.NarSize)
	}
	if got := nix.FormatSHA256(narHash.Sum(nil)); got != ni.NarHash {
		return fmt.Errorf("NAR %s has hash %s, the narinfo says %s", ni.URL, got, ni.NarHash)
	}
	return nil
}
