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

	"github.com/hearth-ci/hearth/nix"
	"github.com/hearth-ci/hearth/nix/narinfo"
	"github.com/hearth-ci/hearth/nix/signing"
)

// Problem is one thing wrong with one narinfo.
type Problem struct {
	Narinfo string
	Err     error
}

func (p Problem) Error() string { return p.Narinfo + ": " + p.Err.Error() }

// Verify checks narinfos — those named by keys, or all when keys is empty: the NAR exists, its
// compressed size and hash and its NAR size and hash match, and, when pub is given, a signature by
// pub verifies. It returns how many narinfos it checked and the problems found; the error is for a
// cache it could not read at all.
func (c *Cache) Verify(ctx context.Context, pub *signing.PublicKey, keys []string) (int, []Problem, error) {
	if len(keys) == 0 {
		var err error
		if keys, err = c.objects.List(ctx, ".narinfo"); err != nil {
			return 0, nil, fmt.Errorf("list narinfos: %w", err)
		}
	}
	sort.Strings(keys)
	var problems []Problem
	for _, k := range keys {
		if err := c.verifyOne(ctx, k, pub); err != nil {
			problems = append(problems, Problem{Narinfo: k, Err: err})
		}
	}
	return len(keys), problems, nil
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
