// Package signing reads, writes and uses the ed25519 keys Nix signs binary-cache narinfo files
// with, in the text forms nix-store --generate-binary-cache-key writes and the
// trusted-public-keys setting reads: "name:base64(key)".
//
// A Nix secret key is libsodium's 64-byte form, the 32-byte seed followed by the public key,
// which is exactly Go's ed25519.PrivateKey, so keys move between Nix and Go unchanged.
package signing

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unicode"

	"github.com/hearth-ci/hearth/secretfile"
)

// SecretKey signs narinfo fingerprints under Name.
type SecretKey struct {
	Name string
	Key  ed25519.PrivateKey
}

// PublicKey checks signatures made under Name.
type PublicKey struct {
	Name string
	Key  ed25519.PublicKey
}

// Generate makes a new key pair named name, like nix-store --generate-binary-cache-key.
func Generate(name string) (SecretKey, error) {
	if err := checkName(name); err != nil {
		return SecretKey{}, err
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return SecretKey{}, fmt.Errorf("generating key %q: %w", name, err)
	}
	return SecretKey{Name: name, Key: priv}, nil
}

// ParseSecretKey reads "name:base64(64 bytes)", ignoring surrounding whitespace such as the
// newline an editor adds to a key file.
func ParseSecretKey(s string) (SecretKey, error) {
	name, key, err := parseKey(s, ed25519.PrivateKeySize, "secret")
	if err != nil {
		return SecretKey{}, err
	}
	priv := ed25519.PrivateKey(key)
	// The second half is a copy of the public key, and signing uses that copy: a key whose
	// halves disagree would produce signatures nobody can verify, so refuse it here.
	if want := ed25519.NewKeyFromSeed(priv.Seed()).Public().(ed25519.PublicKey); !bytes.Equal(want, priv[ed25519.SeedSize:]) {
		return SecretKey{}, fmt.Errorf("secret key %q: its public half does not belong to its seed", name)
	}
	return SecretKey{Name: name, Key: priv}, nil
}

// LoadSecretKey reads a secret key file, such as one written by
// nix-store --generate-binary-cache-key.
func LoadSecretKey(path string) (SecretKey, error) {
	b, err := secretfile.Read(path, "the signing key")
	if err != nil {
		return SecretKey{}, err
	}
	k, err := ParseSecretKey(b)
	if err != nil {
		// The content is secret, so the error names the file and what is wrong, never the key.
		return SecretKey{}, fmt.Errorf("%s is not a Nix secret key (name:base64): %w", path, err)
	}
	return k, nil
}

// ParsePublicKey reads "name:base64(32 bytes)", ignoring surrounding whitespace.
func ParsePublicKey(s string) (PublicKey, error) {
	name, key, err := parseKey(s, ed25519.PublicKeySize, "public")
	if err != nil {
		return PublicKey{}, err
	}
	return PublicKey{Name: name, Key: ed25519.PublicKey(key)}, nil
}

// parseKey splits and decodes "name:base64". Its errors never quote the key material, which may
// be secret.
func parseKey(s string, size int, kind string) (string, []byte, error) {
	s = strings.TrimSpace(s)
	name, b64, ok := strings.Cut(s, ":")
	if !ok {
		return "", nil, fmt.Errorf("%s key has no ':' between name and key", kind)
	}
	if err := checkName(name); err != nil {
		return "", nil, fmt.Errorf("%s key: %w", kind, err)
	}
	key, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return "", nil, fmt.Errorf("%s key %q: key is not base64: %w", kind, name, err)
	}
	if len(key) != size {
		return "", nil, fmt.Errorf("%s key %q: key is %d bytes, want %d", kind, name, len(key), size)
	}
	return name, key, nil
}

// checkName refuses names that cannot round-trip: a ':' would move the split between name and
// key, and whitespace or control characters cannot appear in the whitespace-separated
// trusted-public-keys setting or on a narinfo "Sig:" line.
func checkName(name string) error {
	if name == "" {
		return errors.New("key name is empty")
	}
	for _, r := range name {
		if r == ':' || unicode.IsSpace(r) || unicode.IsControl(r) {
			return fmt.Errorf("key name %q contains %q", name, r)
		}
	}
	return nil
}

// String returns the key in the form nix-store --generate-binary-cache-key writes. That is the
// secret itself, so a SecretKey must not be formatted into logs or errors (%v calls String).
func (k SecretKey) String() string {
	return k.Name + ":" + base64.StdEncoding.EncodeToString(k.Key)
}

// Public returns the public half of k under the same name. Like Sign, it panics when k.Key is
// not 64 bytes.
func (k SecretKey) Public() PublicKey {
	return PublicKey{Name: k.Name, Key: k.Key.Public().(ed25519.PublicKey)}
}

// Sign returns the narinfo "Sig" value for fingerprint (narinfo.NarInfo.Fingerprint). Like
// ed25519.Sign it panics when k.Key is not 64 bytes, which a key from Generate or a Parse
// function always is.
func (k SecretKey) Sign(fingerprint string) string {
	return k.Name + ":" + base64.StdEncoding.EncodeToString(ed25519.Sign(k.Key, []byte(fingerprint)))
}

// String returns the key in the form trusted-public-keys takes.
func (p PublicKey) String() string {
	return p.Name + ":" + base64.StdEncoding.EncodeToString(p.Key)
}

// Verify reports whether sig ("name:base64") is p's signature of fingerprint. A signature under
// another key name is not an error but simply not p's, since a narinfo may carry signatures by
// several keys and a reader tries each against the keys it trusts.
func (p PublicKey) Verify(fingerprint, sig string) bool {
	name, b64, ok := strings.Cut(sig, ":")
	if !ok || name != p.Name || len(p.Key) != ed25519.PublicKeySize {
		return false
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(raw) != ed25519.SignatureSize {
		return false
	}
	return ed25519.Verify(p.Key, []byte(fingerprint), raw)
}

// WriteFiles writes the key pair to dir as NAME.secret (readable by its owner only) and
// NAME.public, and returns their paths.
func (k SecretKey) WriteFiles(dir string) (secret, public string, err error) {
	secret = filepath.Join(dir, k.Name+".secret")
	public = filepath.Join(dir, k.Name+".public")
	if err := os.WriteFile(secret, []byte(k.String()+"\n"), 0o600); err != nil {
		return "", "", fmt.Errorf("write the secret key: %w", err)
	}
	if err := os.WriteFile(public, []byte(k.Public().String()+"\n"), 0o644); err != nil {
		return "", "", fmt.Errorf("write the public key: %w", err)
	}
	return secret, public, nil
}
