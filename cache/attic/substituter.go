package attic

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/hearth-ci/hearth/cache"
	"github.com/hearth-ci/hearth/cache/binarycache"
	"github.com/hearth-ci/hearth/nix/signing"
)

var _ cache.Verifier = (*Cache)(nil)

// Verify checks storePaths as Nix would substitute them, through the server's substituter
// endpoint: an Attic server has no listing, so there must be paths to check. Signatures are
// checked with pub, or with the key the server signs with when pub is nil.
func (c *Cache) Verify(ctx context.Context, pub *signing.PublicKey, storePaths []string) (cache.Verification, error) {
	if len(storePaths) == 0 {
		return cache.Verification{}, errors.New("an Attic server cannot list its paths: name the store paths to verify")
	}
	if pub == nil && c.PublicKey != "" {
		k, err := signing.ParsePublicKey(c.PublicKey)
		if err != nil {
			return cache.Verification{}, fmt.Errorf("the key the Attic server signs with: %w", err)
		}
		pub = &k
	}
	return binarycache.New(substituter{c}, nil).Verify(ctx, pub, storePaths)
}

type substituter struct{ c *Cache }

func (s substituter) String() string { return s.c.substituter }

func (s substituter) get(ctx context.Context, method, key string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, s.c.substituter+key, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+s.c.token)
	return s.c.client.Do(req)
}

func (s substituter) Exists(ctx context.Context, key string) (bool, error) {
	resp, err := s.get(ctx, http.MethodHead, key)
	if err != nil {
		return false, err
	}
	resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return false, nil
	case resp.StatusCode/100 == 2:
		return true, nil
	}
	return false, fmt.Errorf("HEAD %s: %s", key, resp.Status)
}

func (s substituter) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	resp, err := s.get(ctx, http.MethodGet, key)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusNotFound {
		resp.Body.Close()
		return nil, fmt.Errorf("%s: %w", key, binarycache.ErrNotExist)
	}
	if resp.StatusCode/100 != 2 {
		resp.Body.Close()
		return nil, fmt.Errorf("GET %s: %s", key, resp.Status)
	}
	return resp.Body, nil
}

var errReadOnly = errors.New("an Attic cache is written through its API, not as files")

func (s substituter) Put(context.Context, string, io.Reader, string) error { return errReadOnly }

func (s substituter) ListInfo(context.Context, string, string) ([]binarycache.ObjectInfo, error) {
	return nil, errors.New("an Attic server cannot list its narinfos")
}

func (s substituter) Delete(context.Context, string) error { return errReadOnly }
