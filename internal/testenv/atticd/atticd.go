// Package atticd is an in-repo stand-in for the Attic server, which cannot be built here. It
// implements the part of Attic's HTTP API that clients and Nix use — cache-config,
// get-missing-paths, upload-path (metadata in a header or a preamble), nix-cache-info, narinfo and
// nar — with atticd's checks and errors: per-cache pull/push permissions, 401 when a token grants
// nothing on a cache, 403 when it lacks the permission, 404 for a missing cache, 400 "Bad NAR Hash
// or Size" when the streamed NAR does not match its metadata, and narinfos signed at request time
// over the references in the order they were uploaded. It stores NARs uncompressed and serves them
// with "Compression: none", where atticd compresses them; nothing a client sends depends on that.
// MaxBody emulates a proxy in front of the server that answers 413.
//
// It keeps the limits a real deployment has, so that a client that ignores them fails here as it
// would there: get-missing-paths binds every hash as a variable of one SQL query, which SQLite
// (atticd's default database) refuses beyond 32766 variables, and the proxy atticd runs behind
// refuses a header line longer than nginx's default 8 KiB (large_client_header_buffers 4 8k).
package atticd

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/hearth-ci/hearth/nix/narinfo"
	"github.com/hearth-ci/hearth/nix/nixbase32"
	"github.com/hearth-ci/hearth/nix/signing"
)

// Permissions a token has on caches whose name matches a pattern ("*" allowed, as in Attic).
type Permissions struct {
	Pattern    string
	Pull, Push bool
}

// Server is a running stand-in.
type Server struct {
	// URL is the API endpoint, ending in "/".
	URL string
	// MaxBody, when positive, makes upload-path answer 413 for bodies larger than this, as a proxy
	// with a body-size limit would.
	MaxBody int64
	// failUploads is how many more upload-path requests are answered 503, as a proxy does while
	// the server restarts.
	failUploads int

	dir    string
	srv    *http.Server
	busy   sync.WaitGroup // uploads in progress
	mu     sync.Mutex
	caches map[string]*cacheState
	tokens map[string][]Permissions
	// Uploads counts upload-path calls that stored a path; Preambles those whose metadata came in
	// a preamble; MissingCalls the get-missing-paths calls.
	Uploads, Preambles, MissingCalls int
}

type cacheState struct {
	key      signing.SecretKey
	public   bool
	upstream []string
	objects  map[string]*object // by store path hash
}

type object struct {
	info narInfo
}

// narInfo is Attic's UploadPathNarInfo.
type narInfo struct {
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

// maxNarInfoSize is atticd's default max-nar-info-size.
const maxNarInfoSize = 1 << 20

// maxSQLVariables is SQLite's SQLITE_MAX_VARIABLE_NUMBER since 3.32; the query of
// get-missing-paths binds the cache's name besides the hashes.
const maxSQLVariables = 32766

// maxHeaderLine is nginx's default limit on one request header line.
const maxHeaderLine = 8 << 10

var hashRE = regexp.MustCompile(`^[0123456789abcdfghijklmnpqrsvwxyz]{32}$`)

// Start serves on 127.0.0.1, keeping NARs under dir.
func Start(dir string) (*Server, error) {
	if err := os.MkdirAll(filepath.Join(dir, "nars"), 0o755); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &Server{URL: "http://" + ln.Addr().String() + "/", dir: dir, caches: map[string]*cacheState{}, tokens: map[string][]Permissions{}}
	s.srv = &http.Server{Handler: http.HandlerFunc(s.route)}
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

// Close stops the server.
func (s *Server) Close() { _ = s.srv.Close() }

// CreateCache makes a cache with a new signing key and returns its public key.
func (s *Server) CreateCache(name string, public bool) (string, error) {
	k, err := signing.Generate(name)
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.caches[name] = &cacheState{key: k, public: public, upstream: []string{"cache.nixos.org-1"}, objects: map[string]*object{}}
	return k.Public().String(), nil
}

// Token mints an opaque token with the given permissions (atticd's tokens are JWTs, which clients
// must treat as opaque).
func (s *Server) Token(perms ...Permissions) string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	t := hex.EncodeToString(b[:])
	s.mu.Lock()
	s.tokens[t] = perms
	s.mu.Unlock()
	return t
}

// FailUploads makes the next n upload-path requests fail with 503 before the server sees them.
func (s *Server) FailUploads(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failUploads = n
}

// Counts returns Uploads, Preambles and MissingCalls.
func (s *Server) Counts() (uploads, preambles, missingCalls int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.Uploads, s.Preambles, s.MissingCalls
}

func apiError(w http.ResponseWriter, status int, name, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"code": status, "error": name, "message": msg})
}

// permissions returns what the request's token grants on cache: the first pattern that matches.
func (s *Server) permissions(r *http.Request, cache string) (pull, push bool) {
	token := ""
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, rest, _ := strings.Cut(h, " ")
		switch strings.ToLower(scheme) {
		case "bearer":
			token = rest
		case "basic":
			if _, p, ok := r.BasicAuth(); ok {
				token = p
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// An unknown token is ignored, as atticd does: the request goes on as anonymous.
	for _, p := range s.tokens[token] {
		if ok, _ := filepath.Match(p.Pattern, cache); ok || p.Pattern == cache {
			pull, push = p.Pull, p.Push
			break
		}
	}
	if c := s.caches[cache]; c != nil && c.public {
		pull = true
	}
	return pull, push
}

// authorize answers for a request that needs push (or only pull) on cache, and returns the cache.
// A token that grants nothing on a cache cannot learn whether it exists.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request, cache string, needPush bool) *cacheState {
	pull, push := s.permissions(r, cache)
	if !pull && !push {
		apiError(w, http.StatusUnauthorized, "Unauthorized", "Unauthorized.")
		return nil
	}
	s.mu.Lock()
	c := s.caches[cache]
	s.mu.Unlock()
	if c == nil {
		apiError(w, http.StatusNotFound, "NoSuchCache", "The requested cache does not exist.")
		return nil
	}
	if (needPush && !push) || (!needPush && !pull) {
		apiError(w, http.StatusForbidden, "PermissionDenied", "Permission denied.")
		return nil
	}
	return c
}

func (s *Server) route(w http.ResponseWriter, r *http.Request) {
	for name, values := range r.Header {
		for _, v := range values {
			if len(name)+2+len(v) > maxHeaderLine {
				// nginx's answer, in its words.
				http.Error(w, "<html><body><h1>400 Bad Request</h1>Request Header Or Cookie Too Large</body></html>", http.StatusBadRequest)
				return
			}
		}
	}
	p := strings.TrimPrefix(r.URL.Path, "/")
	switch {
	case strings.HasPrefix(p, "_api/v1/cache-config/") && r.Method == http.MethodGet:
		s.cacheConfig(w, r, strings.TrimPrefix(p, "_api/v1/cache-config/"))
	case p == "_api/v1/get-missing-paths" && r.Method == http.MethodPost:
		s.missing(w, r)
	case p == "_api/v1/upload-path" && r.Method == http.MethodPut:
		s.upload(w, r)
	case r.Method == http.MethodGet || r.Method == http.MethodHead:
		cache, rest, _ := strings.Cut(p, "/")
		s.substituter(w, r, cache, rest)
	default:
		apiError(w, http.StatusNotFound, "NotFound", "Not found.")
	}
}

func (s *Server) cacheConfig(w http.ResponseWriter, r *http.Request, name string) {
	c := s.authorize(w, r, name, false)
	if c == nil {
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"substituter_endpoint":     s.URL + name,
		"api_endpoint":             s.URL,
		"public_key":               c.key.Public().String(),
		"is_public":                c.public,
		"store_dir":                "/nix/store",
		"priority":                 41,
		"upstream_cache_key_names": c.upstream,
		"retention_period":         "Global",
	})
}

func (s *Server) missing(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Cache  string   `json:"cache"`
		Hashes []string `json:"store_path_hashes"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, "Failed to parse the request body as JSON: "+err.Error(), http.StatusBadRequest)
		return
	}
	c := s.authorize(w, r, req.Cache, true)
	if c == nil {
		return
	}
	if len(req.Hashes)+1 > maxSQLVariables {
		// SQLite's "too many SQL variables", sanitized as atticd does database errors.
		apiError(w, http.StatusInternalServerError, "InternalServerError", "The server encountered an internal error or misconfiguration.")
		return
	}
	missing := []string{}
	s.mu.Lock()
	s.MissingCalls++
	for _, h := range req.Hashes {
		if !hashRE.MatchString(h) {
			s.mu.Unlock()
			apiError(w, http.StatusInternalServerError, "AtticError", "Invalid store path hash: "+h)
			return
		}
		if c.objects[h] == nil {
			missing = append(missing, h)
		}
	}
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"missing_paths": missing})
}

func (s *Server) upload(w http.ResponseWriter, r *http.Request) {
	s.busy.Add(1)
	defer s.busy.Done()
	s.mu.Lock()
	unavailable := s.failUploads > 0
	if unavailable {
		s.failUploads--
	}
	s.mu.Unlock()
	if unavailable {
		_, _ = io.Copy(io.Discard, r.Body)
		http.Error(w, "<html><body><h1>503 Service Unavailable</h1></body></html>", http.StatusServiceUnavailable)
		return
	}
	body := io.Reader(r.Body)
	if s.MaxBody > 0 {
		// A proxy with a body limit answers before the server sees the request.
		var buf bytes.Buffer
		n, _ := io.Copy(&buf, io.LimitReader(r.Body, s.MaxBody+1))
		if n > s.MaxBody {
			w.Header().Set("Connection", "close")
			http.Error(w, "<html><body><h1>413 Request Entity Too Large</h1></body></html>", http.StatusRequestEntityTooLarge)
			return
		}
		body = &buf
	}
	var info narInfo
	var raw []byte
	if h := r.Header.Get("X-Attic-Nar-Info"); h != "" {
		raw = []byte(h)
	} else if ps := r.Header.Get("X-Attic-Nar-Info-Preamble-Size"); ps != "" {
		n, err := strconv.Atoi(ps)
		if err != nil || n <= 0 {
			apiError(w, http.StatusBadRequest, "RequestError", "Invalid X-Attic-Nar-Info-Preamble-Size")
			return
		}
		if n > maxNarInfoSize {
			apiError(w, http.StatusBadRequest, "RequestError", "Upload info is too large")
			return
		}
		s.mu.Lock()
		s.Preambles++
		s.mu.Unlock()
		raw = make([]byte, n)
		if _, err := io.ReadFull(body, raw); err != nil {
			apiError(w, http.StatusBadRequest, "RequestError", "Failed to read the preamble")
			return
		}
	} else {
		apiError(w, http.StatusBadRequest, "RequestError", "Missing X-Attic-Nar-Info")
		return
	}
	if err := json.Unmarshal(raw, &info); err != nil {
		apiError(w, http.StatusBadRequest, "RequestError", "Failed to parse upload info: "+err.Error())
		return
	}
	c := s.authorize(w, r, info.Cache, true)
	if c == nil {
		return
	}
	if !hashRE.MatchString(info.StorePathHash) || !strings.HasPrefix(info.StorePath, "/nix/store/"+info.StorePathHash+"-") {
		apiError(w, http.StatusBadRequest, "RequestError", "Invalid store path")
		return
	}
	want, err := narHashBytes(info.NarHash)
	if err != nil {
		apiError(w, http.StatusBadRequest, "RequestError", err.Error())
		return
	}
	// Like atticd: read exactly nar_size bytes, hash them, and refuse a mismatch.
	tmp, err := os.CreateTemp(filepath.Join(s.dir, "nars"), ".upload-")
	if err != nil {
		apiError(w, http.StatusInternalServerError, "StorageError", "Storage error")
		return
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(body, int64(info.NarSize)))
	tmp.Close()
	if err != nil || uint64(n) != info.NarSize || !bytes.Equal(h.Sum(nil), want) {
		apiError(w, http.StatusBadRequest, "RequestError", "Bad NAR Hash or Size")
		return
	}
	narFile := filepath.Join(s.dir, "nars", hex.EncodeToString(want))
	kind := "Deduplicated"
	if _, err := os.Stat(narFile); err != nil {
		kind = "Uploaded"
		if err := os.Rename(tmp.Name(), narFile); err != nil {
			apiError(w, http.StatusInternalServerError, "StorageError", "Storage error")
			return
		}
	}
	s.mu.Lock()
	c.objects[info.StorePathHash] = &object{info: info}
	s.Uploads++
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	res := map[string]any{"kind": kind, "frac_deduplicated": nil}
	if kind == "Uploaded" {
		res["file_size"] = n
	}
	_ = json.NewEncoder(w).Encode(res)
}

// narHashBytes accepts "sha256:<hex>" (what the attic client sends) and "sha256:<nix32>".
func narHashBytes(s string) ([]byte, error) {
	v, ok := strings.CutPrefix(s, "sha256:")
	if !ok {
		return nil, fmt.Errorf("invalid nar_hash %q", s)
	}
	if len(v) == 64 {
		return hex.DecodeString(v)
	}
	return nixbase32.DecodeString(v)
}

func (s *Server) substituter(w http.ResponseWriter, r *http.Request, cache, rest string) {
	c := s.authorize(w, r, cache, false)
	if c == nil {
		return
	}
	switch {
	case rest == "nix-cache-info":
		w.Header().Set("Content-Type", "text/x-nix-cache-info")
		fmt.Fprint(w, "WantMassQuery: 1\nStoreDir: /nix/store\nPriority: 41\n")
	case strings.HasSuffix(rest, ".narinfo"):
		s.mu.Lock()
		o := c.objects[strings.TrimSuffix(rest, ".narinfo")]
		s.mu.Unlock()
		if o == nil {
			apiError(w, http.StatusNotFound, "NoSuchObject", "The requested object does not exist.")
			return
		}
		ni, err := s.narinfo(c, o)
		if err != nil {
			apiError(w, http.StatusInternalServerError, "InternalServerError", err.Error())
			return
		}
		w.Header().Set("Content-Type", "text/x-nix-narinfo")
		fmt.Fprint(w, ni)
	case strings.HasPrefix(rest, "nar/") && strings.HasSuffix(rest, ".nar"):
		s.mu.Lock()
		o := c.objects[strings.TrimSuffix(strings.TrimPrefix(rest, "nar/"), ".nar")]
		s.mu.Unlock()
		if o == nil {
			apiError(w, http.StatusNotFound, "NoSuchObject", "The requested object does not exist.")
			return
		}
		want, _ := narHashBytes(o.info.NarHash)
		w.Header().Set("Content-Type", "application/x-nix-nar")
		http.ServeFile(w, r, filepath.Join(s.dir, "nars", hex.EncodeToString(want)))
	default:
		apiError(w, http.StatusNotFound, "NotFound", "Not found.")
	}
}

// narinfo renders an object, signed now with the cache's key over its references in the order
// they were uploaded — as atticd does, so a client that sends them unsorted gets signatures Nix
// rejects.
func (s *Server) narinfo(c *cacheState, o *object) (string, error) {
	want, err := narHashBytes(o.info.NarHash)
	if err != nil {
		return "", err
	}
	ni := &narinfo.NarInfo{
		StorePath: o.info.StorePath, URL: "nar/" + o.info.StorePathHash + ".nar", Compression: "none",
		NarHash: "sha256:" + nixbase32.EncodeToString(want), NarSize: o.info.NarSize, References: o.info.References,
	}
	if o.info.Deriver != nil {
		ni.Deriver = *o.info.Deriver
	}
	if o.info.CA != nil {
		ni.CA = *o.info.CA
	}
	refs := make([]string, len(o.info.References))
	for i, r := range o.info.References {
		refs[i] = "/nix/store/" + r
	}
	fp := "1;" + ni.StorePath + ";" + ni.NarHash + ";" + strconv.FormatUint(ni.NarSize, 10) + ";" + strings.Join(refs, ",")
	ni.Sigs = []string{c.key.Sign(fp)}
	return ni.String(), nil
}

// Dir is where the server keeps its NARs (under nars/, named by the hex NAR hash).
func (s *Server) Dir() string { return s.dir }

// WaitIdle returns once no upload is in progress: a client whose upload failed may return before
// the server has finished with the request.
func (s *Server) WaitIdle() { s.busy.Wait() }
