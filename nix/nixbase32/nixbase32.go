// Package nixbase32 implements the base-32 encoding Nix uses for hashes in store paths,
// narinfo files and "sha256:…" strings.
//
// It is not RFC 4648 base32: the alphabet omits e, o, t and u (so that encoded hashes cannot
// spell common words), there is no padding, and the bytes are read as one little-endian number
// whose highest 5-bit group is printed first. Go's encoding/base32 therefore cannot produce it,
// even with a custom alphabet.
package nixbase32

import (
	"fmt"
)

const alphabet = "0123456789abcdfghijklmnpqrsvwxyz"

// decodeMap maps a character to its 5-bit value, or -1 for characters outside the alphabet.
var decodeMap = func() (m [256]int8) {
	for i := range m {
		m[i] = -1
	}
	for i := range len(alphabet) {
		m[alphabet[i]] = int8(i)
	}
	return m
}()

// EncodedLen returns the length of the encoding of n bytes: one character per started 5-bit
// group, so 52 for a SHA-256 hash and 32 for the 20-byte hash of a store path.
func EncodedLen(n int) int {
	if n <= 0 {
		// Nix's formula underflows for n = 0; the empty input has the empty encoding.
		return 0
	}
	return (n*8-1)/5 + 1
}

// DecodedLen returns the number of bytes encoded by n characters. Not every n is the
// EncodedLen of some byte count; DecodeString rejects those.
func DecodedLen(n int) int {
	if n <= 0 {
		return 0
	}
	return n * 5 / 8
}

// EncodeToString encodes b the way Nix's printHash32 does.
func EncodeToString(b []byte) string {
	n := EncodedLen(len(b))
	out := make([]byte, n)
	for i := range n {
		// The character printed first holds the highest group, so the last one holds bits 0-4.
		group := n - 1 - i
		bit := group * 5
		byteIdx, shift := bit/8, uint(bit%8)
		c := b[byteIdx] >> shift
		if byteIdx+1 < len(b) {
			c |= b[byteIdx+1] << (8 - shift)
		}
		out[i] = alphabet[c&0x1f]
	}
	return string(out)
}

// DecodeString decodes s. Unlike a lenient decoder it accepts exactly the strings
// EncodeToString produces: a length that is no byte count's encoded length, or a first character
// with bits set beyond the last byte, is rejected, because Nix rejects them too and a hash must
// have exactly one spelling to be compared as a string.
func DecodeString(s string) ([]byte, error) {
	n := DecodedLen(len(s))
	if EncodedLen(n) != len(s) {
		return nil, fmt.Errorf("nixbase32: length %d is not the encoded length of any byte count (%d bytes encode to %d characters)", len(s), n, EncodedLen(n))
	}
	out := make([]byte, n)
	for i := range len(s) {
		d := decodeMap[s[i]]
		if d < 0 {
			return nil, fmt.Errorf("nixbase32: invalid character %q at offset %d of %q", s[i:i+1], i, s)
		}
		group := len(s) - 1 - i
		bit := group * 5
		byteIdx, shift := bit/8, uint(bit%8)
		out[byteIdx] |= byte(d) << shift
		carry := byte(d) >> (8 - shift)
		if byteIdx+1 < n {
			out[byteIdx+1] |= carry
		} else if carry != 0 {
			return nil, fmt.Errorf("nixbase32: leading character %q of %q sets bits beyond %d bytes", s[i:i+1], s, n)
		}
	}
	return out, nil
}
