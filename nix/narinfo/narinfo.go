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
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/hearth-ci/hearth/nix"
)

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
		if err := nix.CheckStorePath(v); err != nil {
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
		h, err := nix.NormalizeHash(v)
		n.FileHash = h
		return err
	},
	"FileSize": func(n *NarInfo, v string) (err error) {
		n.FileSize, err = parseSize(v)
		return err
	},
	"NarHash": func(n *NarInfo, v string) error {
		h, err := nix.NormalizeHash(v)
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
			if err := nix.CheckBaseName(ref); err != nil {
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
		if err := nix.CheckBaseName(v); err != nil {
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
	if err := nix.CheckStorePath(n.StorePath); err != nil {
		return "", fmt.Errorf("narinfo fingerprint: StorePath: %w", err)
	}
	narHash, err := nix.NormalizeHash(n.NarHash)
	if err != nil {
		return "", fmt.Errorf("narinfo fingerprint of %s: NarHash: %w", n.StorePath, err)
	}
	if n.NarSize == 0 {
		return "", fmt.Errorf("narinfo fingerprint of %s: NarSize is zero", n.StorePath)
	}
	refs := make([]string, 0, len(n.References))
	for _, ref := range n.References {
		if err := nix.CheckBaseName(ref); err != nil {
			return "", fmt.Errorf("narinfo fingerprint of %s: References: %w", n.StorePath, err)
		}
		refs = append(refs, nix.StorePath(ref))
	}
	// Nix holds references in a sorted set, so the signed list is sorted and duplicate-free
	// whatever order the file used.
	slices.Sort(refs)
	refs = slices.Compact(refs)
	return "1;" + n.StorePath + ";" + narHash + ";" + strconv.FormatUint(n.NarSize, 10) + ";" + strings.Join(refs, ","), nil
}
