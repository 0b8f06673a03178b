// Package attic is the binary-cache backend on an Attic server, through its HTTP API: cache-config,
// get-missing-paths in batches, and upload-path with the path's metadata in a header or, when it is
// large, in a preamble of the body. The server compresses, stores and signs.
package attic

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/hearth-ci/hearth/cache"
	"github.com/hearth-ci/hearth/nix"
	"github.com/hearth-ci/hearth/nixstore"
	"github.com/hearth-ci/hearth/secretfile"
)

// batch is how many hashes one get-missing-paths call carries: the server answers with one SQL
// query, and SQLite bounds its variables.
const batch = 1000

// headerLimit is the size above which the metadata goes in a preamble, as the attic client does.
const headerLimit = 4 << 10

// Config says which cache on which server, and the token that may push to it.
type Config struct {
	Endpoint, Cache, TokenFile string
	// MaxAttempts bounds the tries of an upload that fails with a 5xx or a network error.
	MaxAttempts int
}

// Cache is a cache on an Attic server. It implements cache.Backend.
type Cache struct {
	api         string // the server's API endpoint, ending in "/"
	name        string
	token       string
	tokenFile   string
	upstream    map[string]bool // key names whose paths the server gets from elsewhere
	substituter string
	// PublicKey is the key the server signs with.
	PublicKey string
	client    *http.Client
	attempts  int
}

// CacheConfig is the answer to GET cache-config.
type CacheConfig struct {
	SubstituterEndpoint   string   `json:"substituter_endpoint"`
	APIEndpoint           string   `json:"api_endpoint"`
	PublicKey             string   `json:"public_key"`
	IsPublic              bool     `json:"is_public"`
	StoreDir              string   `json:"store_dir"`
	Priority              int      `json:"priority"`
	UpstreamCacheKeyNames []string `json:"upstream_cache_key_names"`
}

// New reads the token and asks the server about the cache, which also checks the token.
func New(ctx context.Context, cfg Config) (*Cache, error) {
	token, err := secretfile.Read(cfg.TokenFile, "the Attic token")
	if err != nil {
		return nil, err
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	// A connection not made in 10 s will not be made; uploads are retried.
	transport.DialContext = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	transport.ResponseHeaderTimeout = 10 * time.Minute // the server hashes and stores the whole NAR before it answers
	c := &Cache{
		api: strings.TrimSuffix(cfg.Endpoint, "/") + "/", name: cfg.Cache, token: token, tokenFile: cfg.TokenFile,
		client: &http.Client{Transport: transport}, attempts: cfg.MaxAttempts,
	}
	if c.attempts == 0 {
		c.attempts = 4
	}
	var cc CacheConfig
	if err := c.call(ctx, http.MethodGet, "_api/v1/cache-config/"+c.name, nil, &cc); err != nil {
		return nil, err
	}
	// The server says where its API is; the attic client switches to it, and so does hearth.
	if cc.APIEndpoint != "" {
		c.api = strings.TrimSuffix(cc.APIEndpoint, "/") + "/"
	}
	c.PublicKey = cc.PublicKey
	c.substituter = strings.TrimSuffix(cc.SubstituterEndpoint, "/") + "/"
	if cc.SubstituterEndpoint == "" {
		c.substituter = c.api + c.name + "/"
	}
	c.upstream = map[string]bool{}
	for _, k := range cc.UpstreamCacheKeyNames {
		c.upstream[k] = true
	}
	return c, nil
}

func (c *Cache) String() string { return "attic " + c.api + " cache " + c.name }

// Missing drops the paths the server's upstream caches sign, then asks for the rest in batches.
func (c *Cache) Missing(ctx context.Context, paths []nixstore.PathInfo) ([]string, error) {
	byHash := map[string]string{}
	var hashes []string
	for _, p := range paths {
		if c.fromUpstream(p) {
			continue
		}
		h, err := nix.HashPart(p.Path)
		if err != nil {
			return nil, err
		}
		byHash[h] = p.Path
		hashes = append(hashes, h)
	}
	var missing []string
	for start := 0; start < len(hashes); start += batch {
		end := min(start+batch, len(hashes))
		var out struct {
			MissingPaths []string `json:"missing_paths"`
		}
		req := map[string]any{"cache": c.name, "store_path_hashes": hashes[start:end]}
		if err := c.call(ctx, http.MethodPost, "_api/v1/get-missing-paths", req, &out); err != nil {
			return nil, err
		}
		for _, h := range out.MissingPaths {
			if p, ok := byHash[h]; ok {
				missing = append(missing, p)
			}
		}
	}
	return missing, nil
}

func (c *Cache) fromUpstream(p nixstore.PathInfo) bool {
	for _, s := range p.Sigs {
		if name, _, ok := strings.Cut(s, ":"); ok && c.upstream[name] {
			return true
		}
	}
	return false
}

// uploadInfo is attic's UploadPathNarInfo.
type uploadInfo struct {
	Cache         string   `json:"cache"`
	StorePathHash string   `json:"store_path_hash"`
	StorePath     string   `json:"store_path"`
	References    []string `json:"references"`
	System        *string  `json:"system"`
	Deriver       *string  `json:"deriver"`
	Sigs          []string `json:"sigs"`
	CA            *string  `json:"ca"`
	NarHash       string   `json:"nar_hash"`
	NarSize       uint64   `json:"nar_size"`
}

// Put streams the path's NAR to upload-path. The server checks the NAR's hash and size against
// the metadata; hearth's NAR stream itself fails before its end when the store's NAR differs, so
// the server never receives a complete NAR that does not match.
func (c *Cache) Put(ctx context.Context, info nixstore.PathInfo, src cache.NarSource) (cache.Stats, error) {
	var st cache.Stats
	hash, err := nix.HashPart(info.Path)
	if err != nil {
		return st, err
	}
	narHash, err := nix.ParseSHA256(info.NarHash)
	if err != nil {
		return st, fmt.Errorf("NAR hash of %s: %w", info.Path, err)
	}
	ni := info.NarInfo()
	ui := uploadInfo{
		Cache: c.name, StorePathHash: hash, StorePath: ni.StorePath,
		// Attic signs over the references in the order it stores them, and Nix verifies over
		// the sorted list: send them sorted (they already are), as base names.
		References: ni.References,
		Sigs:       ni.Sigs,
		// The attic client sends the hex form.
		NarHash: "sha256:" + hex.EncodeToString(narHash),
		NarSize: ni.NarSize,
		Deriver: optional(ni.Deriver),
		CA:      optional(ni.CA),
	}
	meta, err := json.Marshal(ui)
	if err != nil {
		return st, err
	}
	var lastErr error
	for attempt := 1; attempt <= c.attempts; attempt++ {
		if attempt > 1 {
			// 2 s, 4.5 s, 8 s: a server restarting or a proxy busy-signalling gets time to
			// recover, and the waits of four attempts add up to under 15 s.
			select {
			case <-time.After(time.Duration(attempt*attempt) * 500 * time.Millisecond):
			case <-ctx.Done():
				return st, fmt.Errorf("push %s: stopped before retrying the upload: %w", info.Path, ctx.Err())
			}
		}
		var res struct {
			Kind     string `json:"kind"`
			FileSize int64  `json:"file_size"`
		}
		err := c.upload(ctx, info, meta, src, &res)
		if err == nil {
			return cache.Stats{NarBytes: int64(info.NarSize), FileBytes: res.FileSize}, nil
		}
		lastErr = err
		if !retryable(err) {
			break
		}
	}
	return st, lastErr
}

// optional is s as a JSON string, or null when it is empty.
func optional(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func (c *Cache) upload(ctx context.Context, info nixstore.PathInfo, meta []byte, src cache.NarSource, res any) error {
	nar, err := src()
	if err != nil {
		return err
	}
	defer nar.Close()
	var body io.Reader = nar
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, c.api+"_api/v1/upload-path", nil)
	if err != nil {
		return err
	}
	if len(meta) < headerLimit {
		req.Header.Set("X-Attic-Nar-Info", string(meta))
	} else {
		req.Header.Set("X-Attic-Nar-Info-Preamble-Size", strconv.Itoa(len(meta)))
		body = io.MultiReader(bytes.NewReader(meta), nar)
	}
	rec := &recordingReader{r: body}
	req.Body = io.NopCloser(rec)
	req.ContentLength = -1 // chunked: the NAR is streamed, never held in memory
	req.Header.Set("Content-Type", "application/octet-stream")
	err = c.do(req, res, info)
	// The transport may hide why the body stopped; a NAR that differs from the store's record
	// must be reported as that, and not retried.
	if rec.err != nil && !errors.Is(rec.err, io.EOF) {
		return rec.err
	}
	return err
}

// recordingReader remembers the error that ended the body.
type recordingReader struct {
	r   io.Reader
	err error
}

func (r *recordingReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil {
		r.err = err
	}
	return n, err
}

// call sends a JSON request (body may be nil) and decodes a JSON answer into out.
func (c *Cache) call(ctx context.Context, method, route string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.api+route, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return c.do(req, out, nixstore.PathInfo{})
}

// statusError is an answer other than 2xx, turned into a sentence.
type statusError struct {
	status int
	msg    string
}

func (e *statusError) Error() string { return e.msg }

func retryable(err error) bool {
	var se *statusError
	if errors.As(err, &se) {
		return se.status >= 500
	}
	// Network errors; but not a NAR that differs from the store's record.
	return !errors.Is(err, cache.ErrNarMismatch) && !errors.Is(err, context.Canceled)
}

func (c *Cache) do(req *http.Request, out any, info nixstore.PathInfo) error {
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("User-Agent", "hearth")
	resp, err := c.client.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", req.Method, req.URL.Redacted(), err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 == 2 {
		if out != nil && len(bytes.TrimSpace(body)) > 0 {
			// The attic client treats a 2xx answer it cannot decode as success; so does hearth.
			_ = json.Unmarshal(body, out)
		}
		return nil
	}
	return &statusError{status: resp.StatusCode, msg: c.explain(resp.StatusCode, body, info)}
}

// explain says what a refusal means, in the terms of hearth's config.
func (c *Cache) explain(status int, body []byte, info nixstore.PathInfo) string {
	var apiErr struct {
		Error   string `json:"error"`
		Message string `json:"message"`
	}
	detail := strings.TrimSpace(string(body))
	if json.Unmarshal(body, &apiErr) == nil && apiErr.Message != "" {
		detail = apiErr.Message
	}
	switch status {
	case http.StatusUnauthorized:
		return fmt.Sprintf("the Attic server %s refused the token in %s (401): it is expired, malformed or not for this server, or grants nothing on cache %q; make a new one with atticadm make-token", c.api, c.tokenFile, c.name)
	case http.StatusForbidden:
		return fmt.Sprintf("the token in %s may not push to Attic cache %q (403): make one with --push %s", c.tokenFile, c.name, c.name)
	case http.StatusNotFound:
		return fmt.Sprintf("the Attic server %s has no cache %q (404): create it with `attic cache create %s`, or fix [cache.attic] cache", c.api, c.name, c.name)
	case http.StatusRequestEntityTooLarge:
		return fmt.Sprintf("%s (a %d-byte NAR) is larger than a proxy in front of the Attic server accepts (413): raise its body size limit, e.g. nginx client_max_body_size", info.Path, info.NarSize)
	}
	if info.Path != "" {
		return fmt.Sprintf("the Attic server refused %s (%d): %s", info.Path, status, detail)
	}
	return fmt.Sprintf("the Attic server %s answered %d: %s", c.api, status, detail)
}
