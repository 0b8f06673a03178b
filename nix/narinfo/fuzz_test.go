package narinfo

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParseFingerprint reads arbitrary bytes as a narinfo. It must never panic, and what Parse
// accepts can be fingerprinted: Parse checks everything Fingerprint needs. (FuzzParse, in
// narinfo_test.go, checks the String round trip.)
func FuzzParseFingerprint(f *testing.F) {
	files, _ := filepath.Glob("testdata/nix-2.8/*/*.narinfo")
	for _, file := range files {
		if b, err := os.ReadFile(file); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte(minimal))
	f.Add([]byte(minimal + "References: \nDeriver: unknown-deriver\nCA: \nSig: \nSig: k:abc\n"))
	f.Add([]byte(strings.TrimSuffix(minimal, "\n")))
	f.Add([]byte(minimal + "References:  mydivsscdmlnb3pjc4n1y3dlvzs0v3gd-x   mydivsscdmlnb3pjc4n1y3dlvzs0v3gd-x\n"))
	f.Add([]byte(minimal + "FileHash: sha256-" + strings.Repeat("A", 43) + "=\nFileSize: 0\nCompression:\n"))
	f.Add([]byte(minimal + "CA: fixed:r:sha256:1jpg5v8rcf4d08rlpq51vnd1w800l64h34r0bw4vkb6z3qlk089k\nFuture: field\n\n\r\n"))
	f.Add([]byte(minimal + "NarSize: 1\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := Parse(bytes.NewReader(data))
		if err != nil {
			if n != nil {
				t.Fatalf("Parse returned a NarInfo with error %v", err)
			}
			return
		}
		if _, err := n.Fingerprint(); err != nil {
			t.Fatalf("Parse accepted a narinfo that cannot be fingerprinted: %v\n%q", err, data)
		}
	})
}
