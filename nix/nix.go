// Package nix is the vocabulary of Nix that every part of hearth shares: where the store and the
// daemon's socket are, what a store path is, and the spellings of a SHA-256 hash. It is the one
// place these are defined; the format packages below it (nar, narinfo, nixbase32, signing) and
// the packages that read the store or push from it use it rather than spelling them again.
package nix

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/hearth-ci/hearth/nix/nixbase32"
)

// StoreDir is the only store directory hearth knows: the one every binary cache of the team
// serves, and the one Nix refuses narinfo files for when their StorePath lies outside it.
const StoreDir = "/nix/store"

// DaemonSocket is where a nix-daemon listens unless told otherwise, on a host and inside a job
// container alike.
const DaemonSocket = "/nix/var/nix/daemon-socket/socket"

// hashPartLen is the length of the nixbase32 hash in a store path's base name (160 bits).
const hashPartLen = 32

// maxNameLen is Nix's limit on the name after the hash part.
const maxNameLen = 211

// CheckStorePath checks that p is a top-level entry of the store, /nix/store/<hash>-<name>, by
// Nix's rules for the base name.
func CheckStorePath(p string) error {
	base, ok := strings.CutPrefix(p, StoreDir+"/")
	if !ok || strings.Contains(base, "/") {
		return fmt.Errorf("%q is not a path directly under %s", p, StoreDir)
	}
	return CheckBaseName(base)
}

// CheckBaseName applies Nix's rules for <hash>-<name>, so that nothing hearth accepts is a path
// Nix would refuse, or one that could leave the store directory (like "..").
func CheckBaseName(base string) error {
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

// HashPart returns the 32-character hash of a store path (/nix/store/<hash>-<name>) or of its
// base name (<hash>-<name>), which is what a binary cache names the path's narinfo after.
func HashPart(storePath string) (string, error) {
	base := storePath
	if strings.Contains(storePath, "/") {
		if err := CheckStorePath(storePath); err != nil {
			return "", err
		}
		base = storePath[len(StoreDir)+1:]
	} else if err := CheckBaseName(base); err != nil {
		return "", err
	}
	return base[:hashPartLen], nil
}

// HashPartOf returns the hash of what people name a store path by: the path, its base name, or
// the hash alone.
func HashPartOf(name string) (string, error) {
	base := name[strings.LastIndex(name, "/")+1:]
	hash, _, _ := strings.Cut(base, "-")
	if len(hash) != hashPartLen {
		return "", fmt.Errorf("%q names no store path: give the path, its base name or its 32-character hash", name)
	}
	if _, err := nixbase32.DecodeString(hash); err != nil {
		return "", fmt.Errorf("%q names no store path: its hash part is not nixbase32: %w", name, err)
	}
	return hash, nil
}

// StorePath returns the full path of a store path given as a base name, and a full path as it is:
// Nix prints references and derivers either way, depending on its version.
func StorePath(p string) string {
	if strings.HasPrefix(p, "/") {
		return p
	}
	return StoreDir + "/" + p
}

// FormatSHA256 writes a SHA-256 digest the way narinfo files and fingerprints do:
// "sha256:<nix32>".
func FormatSHA256(digest []byte) string {
	return "sha256:" + nixbase32.EncodeToString(digest)
}

// ParseSHA256 returns the digest of a SHA-256 hash in any spelling Nix accepts: "sha256:<nix32>",
// "sha256:<hex>", "sha256:<base64>" and SRI "sha256-<base64>". Other algorithms are refused,
// because the hashes of NARs and NAR files are always SHA-256.
func ParseSHA256(h string) ([]byte, error) {
	var raw []byte
	var err error
	if rest, ok := strings.CutPrefix(h, "sha256-"); ok {
		raw, err = decodeBase64(rest)
		if err != nil {
			return nil, fmt.Errorf("hash %q: bad SRI base64: %w", h, err)
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
			return nil, fmt.Errorf("hash %q: %d characters is no encoding of a SHA-256 hash (want 52 nix32, 64 hex or 44 base64)", h, len(rest))
		}
		if err != nil {
			return nil, fmt.Errorf("hash %q: %w", h, err)
		}
	} else {
		algo, _, found := strings.Cut(h, ":")
		if !found {
			algo, _, found = strings.Cut(h, "-")
		}
		if !found {
			return nil, fmt.Errorf("hash %q has no sha256: or sha256- prefix", h)
		}
		return nil, fmt.Errorf("hash %q: algorithm %q is not sha256", h, algo)
	}
	if len(raw) != sha256.Size {
		return nil, fmt.Errorf("hash %q is %d bytes, not the %d of SHA-256", h, len(raw), sha256.Size)
	}
	return raw, nil
}

// NormalizeHash returns a SHA-256 hash, in any spelling ParseSHA256 accepts, in the one form
// narinfo files and fingerprints use, so that hashes can be compared as strings.
func NormalizeHash(h string) (string, error) {
	raw, err := ParseSHA256(h)
	if err != nil {
		return "", err
	}
	return FormatSHA256(raw), nil
}

// decodeBase64 is as lenient as Nix's decoder, which accepts missing or extra padding and stray
// low bits; the result is re-encoded anyway, so leniency cannot create a second spelling.
func decodeBase64(s string) ([]byte, error) {
	return base64.RawStdEncoding.DecodeString(strings.TrimRight(s, "="))
}
