// Package narinfo reads and writes the .narinfo files of Nix binary caches, and computes the
// fingerprint their signatures cover.
//
// The format follows Nix's nar-info.cc: one "Name: value" line per field. Parse is as strict as
// Nix where a laxer reading could make two programs disagree about what a signed file says
// (duplicate fields, malformed hashes and store paths), and laxer where Nix's own parser
// misreads harmless variations (a missing final newline, a bare "References:").
package narinfo

import (
	"bufio"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/hearth-ci/hearth/cache/nixbase32"
)

// storeDir is the only store directory hearth serves; Nix also refuses narinfo files whose
// StorePath lies outside the store it reads them for.
const storeDir = "/nix/store"

// hashPartLen is the length of the nixbase32 hash in a store path's base name (160 bits).
const hashPartLen = 32

// maxNameLen is Nix's limit on the name after the hash part.
const maxNameLen = 211

// NarInfo is one .narinfo file.
type NarInfo struct {
	StorePath   string   // full path, /nix/store/<hash>-<name>
	URL         string   // e.g. nar/<filehash>.nar.zst
	Compression string   // "zstd", "xz", "none", ...
	FileHash    string   // "sha256:<nix32>" ("" when absent)
	FileSize    uint64   // 0 when absent
	NarHash     string   // "sha256:<nix32>"
	NarSize     uint64   // of the uncompressed NAR; never 0
	References  []string // base names (<hash>-<name>), as in the file
	Deriver     string   // base name, "" when none
	System      string   // "" when absent
	Sigs        []string // "<keyname>:<base64>"
	CA          string   // "" when absent
}

// Parse reads a narinfo file. It reads r to the end, so a caller reading from an untrusted
// server should bound r (io.LimitReader). Hashes are returned in Nix's canonical
// "sha256:<nix32>" form whatever form the file used, so they can be compared as strings.
func Parse(r io.Reader) (*NarInfo, error) {
	n := &NarInfo{}
	seen := map[string]int{} // field name -> line it was first set on
	br := bufio.NewReader(r)
	for lineNo := 1; ; lineNo++ {
		line, err := br.ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("narinfo: reading line %d: %w", lineNo, err)
		}
		if line == "" && err != nil {
			break
		}
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			// Nix never writes blank lines; skipping them keeps a stray trailing newline from a
			// web server or an editor from making the file unreadable.
			continue
		}
		name, value, err := splitLine(line)
		if err != nil {
			return nil, fmt.Errorf("narinfo: line %d: %w", lineNo, err)
		}
		if _, known := setters[name]; !known {
			// Newer Nix versions and other tools add fields; Nix ignores what it does not know.
			continue
		}
		if first, dup := seen[name]; dup && name != "Sig" {
			// Nix keeps the last of most repeated fields but rejects some; refusing all of them
			// means no reader can be shown a different StorePath or NarHash than the one signed.
			return nil, fmt.Errorf("narinfo: line %d: %s repeats the field of line %d", lineNo, name, first)
		}
		seen[name] = lineNo
		if err := setters[name](n, value); err != nil {
			return nil, fmt.Errorf("narinfo: line %d: %s: %w", lineNo, name, err)
		}
	}
	if n.Compression == "" {
		// Binary caches predating the Compression field only ever held bzip2 NARs.
		n.Compression = "bzip2"
	}
	switch {
	case n.StorePath == "":
		return nil, errors.New("narinfo: StorePath missing")
	case n.URL == "":
		return nil, errors.New("narinfo: URL missing")
	case n.NarHash == "":
		return nil, errors.New("narinfo: NarHash missing")
	case n.NarSize == 0:
		return nil, errors.New("narinfo: NarSize missing or zero")
	}
	return n, nil
}

// splitLine splits "Name: value".
func splitLine(line string) (name, value string, err error) {
	name, value, ok := strings.Cut(line, ":")
	if !ok {
		return "", "", fmt.Errorf("%q has no ':' (want \"Name: value\")", line)
	}
	if value == "" {
		// Editors that strip trailing blanks turn "References: " into "References:"; Nix would
		// read the next line as its value, which is never what was meant.
		return name, "", nil
	}
	value, ok = strings.CutPrefix(value, " ")
	if !ok {
		return "", "", fmt.Errorf("%q: no space after %q (want \"Name: value\")", line, name+":")
	}
	return name, value, nil
}

var setters = map[string]func(n *NarInfo, value string) error{
	"StorePath": func(n *NarInfo, v string) error {
		if err := checkStorePath(v); err != nil {
			return err
		}
		n.StorePath = v
		return nil
	},
	"URL": func(n *NarInfo, v string) error {
		n.URL = v
		return nil
	},
	"Compression": func(n *NarInfo, v string) error {
		n.Compression = v
		return nil
	},
	"FileHash": func(n *NarInfo, v string) error {
		h, err := NormalizeHash(v)
		n.FileHash = h
		return err
	},
	"FileSize": func(n *NarInfo, v string) (err error) {
		n.FileSize, err = parseSize(v)
		return err
	},
	"NarHash": func(n *NarInfo, v string) error {
		h, err := NormalizeHash(v)
		n.NarHash = h
		return err
	},
	"NarSize": func(n *NarInfo, v string) (err error) {
		n.NarSize, err = parseSize(v)
		return err
	},
	"References": func(n *NarInfo, v string) error {
		// Nix splits on single spaces and drops empty pieces, so runs of spaces are harmless.
		for ref := range strings.SplitSeq(v, " ") {
			if ref == "" {
				continue
			}
			if err := checkBaseName(ref); err != nil {
				return err
			}
			n.References = append(n.References, ref)
		}
		return nil
	},
	"Deriver": func(n *NarInfo, v string) error {
		if v == "unknown-deriver" {
			// What old Nix versions wrote for paths without a known deriver.
			return nil
		}
		if err := checkBaseName(v); err != nil {
			return err
		}
		n.Deriver = v
		return nil
	},
	"System": func(n *NarInfo, v string) error {
		n.System = v
		return nil
	},
	"Sig": func(n *NarInfo, v string) error {
		// Signatures are checked by whoever trusts keys, not here: a malformed one must not
		// hide the valid signatures next to it.
		n.Sigs = append(n.Sigs, v)
		return nil
	},
	"CA": func(n *NarInfo, v string) error {
		if v != "" && !strings.HasPrefix(v, "text:") && !strings.HasPrefix(v, "fixed:") {
			return fmt.Errorf("%q is neither text:… nor fixed:…", v)
		}
		n.CA = v
		return nil
	},
}

func parseSize(v string) (uint64, error) {
	size, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a byte count: %w", v, err)
	}
	return size, nil
}

// String returns the file in the field order Nix writes, so that a NarInfo parsed from a Nix
// file is written back byte for byte. Empty optional fields are omitted; an empty Compression
// therefore reads back as "bzip2". Values are written verbatim: a value containing a newline
// corrupts the file.
func (n *NarInfo) String() string {
	var b strings.Builder
	field := func(name, value string) {
		b.WriteString(name)
		b.WriteString(": ")
		b.WriteString(value)
		b.WriteByte('\n')
	}
	field("StorePath", n.StorePath)
	field("URL", n.URL)
	if n.Compression != "" {
		field("Compression", n.Compression)
	}
	if n.FileHash != "" {
		field("FileHash", n.FileHash)
	}
	if n.FileSize != 0 {
		field("FileSize", strconv.FormatUint(n.FileSize, 10))
	}
	field("NarHash", n.NarHash)
	field("NarSize", strconv.FormatUint(n.NarSize, 10))
	// Nix always writes References, even with an empty list (and so a trailing space).
	field("References", strings.Join(n.References, " "))
	if n.Deriver != "" {
		field("Deriver", n.Deriver)
	}
	if n.System != "" {
		field("System", n.System)
	}
	for _, sig := range n.Sigs {
		field("Sig", sig)
	}
	if n.CA != "" {
		field("CA", n.CA)
	}
	return b.String()
}

// Fingerprint returns the string a narinfo signature signs (Nix's ValidPathInfo::fingerprint):
// it binds the path to its NAR's content and its references, and nothing else, so URL,
// compression and CA may change without re-signing.
func (n *NarInfo) Fingerprint() (string, error) {
	if err := checkStorePath(n.StorePath); err != nil {
		return "", fmt.Errorf("narinfo fingerprint: StorePath: %w", err)
	}
	narHash, err := NormalizeHash(n.NarHash)
	if err != nil {
		return "", fmt.Errorf("narinfo fingerprint of %s: NarHash: %w", n.StorePath, err)
	}
	if n.NarSize == 0 {
		return "", fmt.Errorf("narinfo fingerprint of %s: NarSize is zero", n.StorePath)
	}
	refs := make([]string, 0, len(n.References))
	for _, ref := range n.References {
		if err := checkBaseName(ref); err != nil {
			return "", fmt.Errorf("narinfo fingerprint of %s: References: %w", n.StorePath, err)
		}
		refs = append(refs, storeDir+"/"+ref)
	}
	// Nix holds references in a sorted set, so the signed list is sorted and duplicate-free
	// whatever order the file used.
	slices.Sort(refs)
	refs = slices.Compact(refs)
	return "1;" + n.StorePath + ";" + narHash + ";" + strconv.FormatUint(n.NarSize, 10) + ";" + strings.Join(refs, ","), nil
}

// HashPart returns the 32-character hash of a store path (/nix/store/<hash>-<name>) or of its
// base name (<hash>-<name>), which is what a binary cache names the path's narinfo after.
func HashPart(storePath string) (string, error) {
	base := storePath
	if strings.Contains(storePath, "/") {
		if err := checkStorePath(storePath); err != nil {
			return "", err
		}
		base = storePath[len(storeDir)+1:]
	} else if err := checkBaseName(base); err != nil {
		return "", err
	}
	return base[:hashPartLen], nil
}

func checkStorePath(p string) error {
	base, ok := strings.CutPrefix(p, storeDir+"/")
	if !ok || strings.Contains(base, "/") {
		return fmt.Errorf("%q is not a path directly under %s", p, storeDir)
	}
	return checkBaseName(base)
}

// checkBaseName applies Nix's rules for <hash>-<name>, so that nothing Parse accepts is a
// path Nix would refuse (or one that could escape the store directory, like "..").
func checkBaseName(base string) error {
	if len(base) < hashPartLen+2 || base[hashPartLen] != '-' {
		return fmt.Errorf("store path name %q is not <32-character hash>-<name>", base)
	}
	hash, name := base[:hashPartLen], base[hashPartLen+1:]
	if _, err := nixbase32.DecodeString(hash); err != nil {
		return fmt.Errorf("store path name %q has a bad hash part: %w", base, err)
	}
	if len(name) > maxNameLen {
		return fmt.Errorf("store path name %q: name longer than %d characters", base, maxNameLen)
	}
	for i := range len(name) {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("+-._?=", c) >= 0) {
			return fmt.Errorf("store path name %q: character %q is not allowed", base, name[i:i+1])
		}
	}
	return nil
}

// NormalizeHash returns a SHA-256 hash in the form narinfo files and fingerprints use,
// "sha256:<nix32>". It accepts that form, "sha256:<hex>", "sha256:<base64>" (as Nix does) and
// SRI "sha256-<base64>"; other algorithms are refused because narinfo hashes are always SHA-256.
func NormalizeHash(h string) (string, error) {
	var raw []byte
	var err error
	if rest, ok := strings.CutPrefix(h, "sha256-"); ok {
		raw, err = decodeBase64(rest)
		if err != nil {
			return "", fmt.Errorf("hash %q: bad SRI base64: %w", h, err)
		}
	} else if rest, ok := strings.CutPrefix(h, "sha256:"); ok {
		// Nix tells the encodings apart by length, which works because they all differ.
		switch len(rest) {
		case nixbase32.EncodedLen(sha256.Size):
			raw, err = nixbase32.DecodeString(rest)
		case hex.EncodedLen(sha256.Size):
			raw, err = hex.DecodeString(rest)
		case base64.StdEncoding.EncodedLen(sha256.Size):
			raw, err = decodeBase64(rest)
		default:
			return "", fmt.Errorf("hash %q: %d characters is no encoding of a SHA-256 hash (want 52 nix32, 64 hex or 44 base64)", h, len(rest))
		}
		if err != nil {
			return "", fmt.Errorf("hash %q: %w", h, err)
		}
	} else {
		algo, _, found := strings.Cut(h, ":")
		if !found {
			algo, _, found = strings.Cut(h, "-")
		}
		if !found {
			return "", fmt.Errorf("hash %q has no sha256: or sha256- prefix", h)
		}
		return "", fmt.Errorf("hash %q: algorithm %q is not sha256", h, algo)
	}
	if len(raw) != sha256.Size {
		return "", fmt.Errorf("hash %q is %d bytes, not the %d of SHA-256", h, len(raw), sha256.Size)
	}
	return "sha256:" + nixbase32.EncodeToString(raw), nil
}

// decodeBase64 is as lenient as Nix's decoder, which accepts missing or extra padding and stray
// low bits; the result is re-encoded anyway, so leniency cannot create a second spelling.
func decodeBase64(s string) ([]byte, error) {
	return base64.RawStdEncoding.DecodeString(strings.TrimRight(s, "="))
}
