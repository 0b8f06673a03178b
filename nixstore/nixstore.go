// Package nixstore reads the local Nix store through the nix command line: the path info of a
// whole closure in one call (in the JSON shape of any Nix version), the outputs of derivations,
// whether a path is still there, and what a command-line argument names. PathInfo knows its own
// narinfo, and Order sorts paths after what they reference.
package nixstore

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/hearth-ci/hearth/nix"
	"github.com/hearth-ci/hearth/nix/narinfo"
)

// PathInfo is what the store knows about one valid path.
type PathInfo struct {
	Path string
	// NarHash is "sha256:<nix32>", whatever form Nix printed.
	NarHash string
	NarSize uint64
	// References are full store paths, sorted.
	References []string
	// Deriver is a full store path, or "".
	Deriver string
	Sigs    []string
	CA      string
}

// NarInfo is the narinfo of the path as far as the store knows it: everything but where a cache
// keeps the NAR (URL, Compression, FileHash, FileSize) and the cache's own signature, which the
// cache adds.
func (p PathInfo) NarInfo() *narinfo.NarInfo {
	ni := &narinfo.NarInfo{
		StorePath:  p.Path,
		NarHash:    p.NarHash,
		NarSize:    p.NarSize,
		References: make([]string, 0, len(p.References)),
		CA:         p.CA,
		Sigs:       append([]string{}, p.Sigs...),
	}
	for _, r := range p.References {
		ni.References = append(ni.References, path.Base(r))
	}
	if p.Deriver != "" {
		ni.Deriver = path.Base(p.Deriver)
	}
	return ni
}

// Store runs nix commands against one store.
type Store struct {
	// Env is the environment of the nix commands (nil: this process's). It selects the store:
	// NIX_REMOTE, NIX_DAEMON_SOCKET_PATH.
	Env []string
}

// Daemon returns a Store that talks to the nix-daemon listening on socket.
func Daemon(socket string) *Store {
	return &Store{Env: append(os.Environ(), "NIX_REMOTE=daemon", "NIX_DAEMON_SOCKET_PATH="+socket)}
}

// Closure returns the path info of paths and of everything they reference, recursively.
func (s *Store) Closure(ctx context.Context, paths []string) ([]PathInfo, error) {
	return s.pathInfo(ctx, paths, "--recursive")
}

// Info returns the path info of paths alone.
func (s *Store) Info(ctx context.Context, paths []string) ([]PathInfo, error) {
	return s.pathInfo(ctx, paths)
}

// pathInfo runs nix path-info --json with flags on paths, a thousand at a time.
func (s *Store) pathInfo(ctx context.Context, paths []string, flags ...string) ([]PathInfo, error) {
	if len(paths) == 0 {
		return nil, nil
	}
	for _, p := range paths {
		if err := nix.CheckStorePath(p); err != nil {
			return nil, err
		}
	}
	args := []string{"--extra-experimental-features", "nix-command", "path-info", "--json"}
	args = append(args, flags...)
	var all []PathInfo
	seen := map[string]bool{}
	for _, chunk := range chunks(paths) {
		out, err := s.run(ctx, "nix", append(args, chunk...)...)
		if err != nil {
			return nil, err
		}
		infos, err := ParseJSON(out)
		if err != nil {
			return nil, err
		}
		for _, in := range infos {
			if !seen[in.Path] {
				seen[in.Path] = true
				all = append(all, in)
			}
		}
	}
	return all, nil
}

// chunks splits paths so that no command line grows past what exec allows, however long a queue
// got while a cache was away.
func chunks(paths []string) [][]string {
	const size = 1000
	var out [][]string
	for start := 0; start < len(paths); start += size {
		out = append(out, paths[start:min(start+size, len(paths))])
	}
	return out
}

// CopyTo copies paths and their closures from this store into the store of the nix-daemon at
// socket. Run as root, which that daemon trusts, it needs no signatures: it is how a tier's store
// gets what the runner host built for every tier, never the other way round.
func (s *Store) CopyTo(ctx context.Context, socket string, paths ...string) error {
	for _, p := range paths {
		if err := nix.CheckStorePath(p); err != nil {
			return err
		}
	}
	for _, chunk := range chunks(paths) {
		args := append([]string{"--extra-experimental-features", "nix-command", "copy", "--no-check-sigs", "--to", "unix://" + socket}, chunk...)
		if _, err := s.run(ctx, "nix", args...); err != nil {
			return err
		}
	}
	return nil
}

// Outputs returns the output paths of derivations.
func (s *Store) Outputs(ctx context.Context, drvs ...string) ([]string, error) {
	if len(drvs) == 0 {
		return nil, nil
	}
	for _, d := range drvs {
		if err := nix.CheckStorePath(d); err != nil {
			return nil, err
		}
	}
	var outs []string
	for _, chunk := range chunks(drvs) {
		out, err := s.run(ctx, "nix-store", append([]string{"--query", "--outputs"}, chunk...)...)
		if err != nil {
			return nil, err
		}
		outs = append(outs, strings.Fields(string(out))...)
	}
	return outs, nil
}

// run runs a nix command on store paths; its error names the command and how many paths it was
// given (a queue drained after an outage can name a thousand), and what Nix said.
func (s *Store) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = s.Env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s: %v: %s", describe(name, args), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// describe is a command line with its store-path arguments counted rather than listed.
func describe(name string, args []string) string {
	words := []string{name}
	paths := 0
	for _, a := range args {
		if strings.HasPrefix(a, nix.StoreDir+"/") {
			paths++
			continue
		}
		words = append(words, a)
	}
	switch paths {
	case 0:
	case 1:
		words = append(words, "(1 store path)")
	default:
		words = append(words, fmt.Sprintf("(%d store paths)", paths))
	}
	return strings.Join(words, " ")
}

// Has reports whether path is in the store now: a queued path may have been garbage-collected
// since it was built.
func (s *Store) Has(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// jsonInfo is one path's entry in `nix path-info --json`, in any of the shapes Nix has printed:
// narHash as "sha256:<nix32>", SRI "sha256-<base64>" or (Nix 2.33 and later) an object;
// references and deriver as full paths or base names.
type jsonInfo struct {
	Path       string          `json:"path"`
	Valid      *bool           `json:"valid"`
	NarHash    json.RawMessage `json:"narHash"`
	NarSize    uint64          `json:"narSize"`
	References []string        `json:"references"`
	Deriver    *string         `json:"deriver"`
	Signatures []string        `json:"signatures"`
	CA         json.RawMessage `json:"ca"`
}

// ParseJSON reads the output of `nix path-info --json`: an array of entries with "path" (Nix 2.18
// and earlier, Lix) or an object keyed by path (Nix 2.19 and later). Invalid paths (an entry with
// "valid": false, or null) are an error naming them.
func ParseJSON(b []byte) ([]PathInfo, error) {
	var entries []jsonInfo
	trimmed := bytes.TrimSpace(b)
	switch {
	case bytes.HasPrefix(trimmed, []byte("[")):
		if err := json.Unmarshal(trimmed, &entries); err != nil {
			return nil, fmt.Errorf("parse nix path-info output: %w", err)
		}
	case bytes.HasPrefix(trimmed, []byte("{")):
		var byPath map[string]*jsonInfo
		if err := json.Unmarshal(trimmed, &byPath); err != nil {
			return nil, fmt.Errorf("parse nix path-info output: %w", err)
		}
		for p, e := range byPath {
			if e == nil {
				f := false
				e = &jsonInfo{Valid: &f}
			}
			e.Path = p
			entries = append(entries, *e)
		}
	default:
		return nil, fmt.Errorf("parse nix path-info output: expected a JSON array or object, got %.40q", trimmed)
	}
	var out []PathInfo
	for _, e := range entries {
		if e.Valid != nil && !*e.Valid {
			return nil, fmt.Errorf("%s is not in the store", e.Path)
		}
		pi, err := e.info()
		if err != nil {
			return nil, fmt.Errorf("path info of %s: %w", e.Path, err)
		}
		out = append(out, pi)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

func (e jsonInfo) info() (PathInfo, error) {
	if err := nix.CheckStorePath(e.Path); err != nil {
		return PathInfo{}, err
	}
	hash, err := parseHash(e.NarHash)
	if err != nil {
		return PathInfo{}, err
	}
	if e.NarSize == 0 {
		return PathInfo{}, fmt.Errorf("no narSize")
	}
	pi := PathInfo{Path: e.Path, NarHash: hash, NarSize: e.NarSize}
	if len(e.Signatures) > 0 { // newer Nix prints [] where older left the field out
		pi.Sigs = e.Signatures
	}
	for _, r := range e.References {
		pi.References = append(pi.References, nix.StorePath(r))
	}
	sort.Strings(pi.References)
	if e.Deriver != nil && *e.Deriver != "" {
		pi.Deriver = nix.StorePath(*e.Deriver)
	}
	if len(e.CA) > 0 && string(e.CA) != "null" {
		ca, err := parseCA(e.CA)
		if err != nil {
			return PathInfo{}, err
		}
		pi.CA = ca
	}
	return pi, nil
}

func parseHash(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", fmt.Errorf("no narHash")
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return nix.NormalizeHash(s)
	}
	var structured struct {
		Algorithm string `json:"algorithm"`
		Format    string `json:"format"`
		Hash      string `json:"hash"`
	}
	if err := json.Unmarshal(raw, &structured); err != nil {
		return "", fmt.Errorf("hash %s is neither a string nor a hash object", raw)
	}
	if structured.Algorithm != "sha256" {
		return "", fmt.Errorf("hash uses %q, not sha256", structured.Algorithm)
	}
	switch structured.Format {
	case "base64", "sri":
		return nix.NormalizeHash("sha256-" + structured.Hash)
	case "nix32", "base32", "base16", "hex":
		return nix.NormalizeHash("sha256:" + structured.Hash)
	}
	return "", fmt.Errorf("hash format %q is not known", structured.Format)
}

// parseCA returns a content address in the form narinfo files use ("fixed:r:sha256:<nix32>"),
// from Nix's string or (Nix 2.33 and later) structured form.
func parseCA(raw json.RawMessage) (string, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var structured struct {
		Method string          `json:"method"`
		Hash   json.RawMessage `json:"hash"`
	}
	if err := json.Unmarshal(raw, &structured); err != nil {
		return "", fmt.Errorf("ca %s is neither a string nor a content-address object", raw)
	}
	hash, err := parseHash(structured.Hash)
	if err != nil {
		return "", fmt.Errorf("ca: %w", err)
	}
	prefix, ok := map[string]string{"text": "text:", "flat": "fixed:", "nar": "fixed:r:", "git": "fixed:git:"}[structured.Method]
	if !ok {
		return "", fmt.Errorf("ca method %q is not known", structured.Method)
	}
	return prefix + hash, nil
}

// Order returns infos with every path after the paths it references (those among infos), so
// that a cache never holds a path whose references it lacks.
func Order(infos []PathInfo) []PathInfo {
	byPath := make(map[string]*PathInfo, len(infos))
	for i := range infos {
		byPath[infos[i].Path] = &infos[i]
	}
	seen := make(map[string]bool, len(infos))
	out := make([]PathInfo, 0, len(infos))
	var visit func(p *PathInfo)
	visit = func(p *PathInfo) {
		if seen[p.Path] {
			return
		}
		seen[p.Path] = true
		for _, r := range p.References {
			if dep, ok := byPath[r]; ok && r != p.Path {
				visit(dep)
			}
		}
		out = append(out, *p)
	}
	for i := range infos {
		visit(&infos[i])
	}
	return out
}

// Resolve returns the store path a command-line argument names: a path in the store as it is,
// and anything else (a result symlink, as nix-build leaves) with its links followed, as nix
// commands take them. What cannot be resolved is returned as given, for the store to refuse.
func Resolve(arg string) string {
	if strings.HasPrefix(arg, nix.StoreDir+"/") {
		return arg
	}
	if resolved, err := filepath.EvalSymlinks(arg); err == nil {
		return resolved
	}
	return arg
}
