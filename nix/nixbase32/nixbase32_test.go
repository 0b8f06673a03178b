package nixbase32

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"regexp"
	"strings"
	"testing"
)

// Every expected value below was printed by Nix 2.8's `nix-hash --type T --to-base32 HEX`.
func TestEncodeDecode(t *testing.T) {
	empty := sha256.Sum256(nil)
	tests := []struct {
		name, hex, nix32 string
	}{
		{"sha256 of nothing", hex.EncodeToString(empty[:]), "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"},
		{"sha256 of a 144-byte NAR", "baeabdb75c223d171800c17b05c5e7e8e9980723a90eb6ffcc632a305afc5a42", "0hjszid30ak3rkzvc3m94c3risg8wz2hayy100c1fg92bjvvvsms"},
		{"sha256 of the NAR of a file holding hi", "10551daed7fa467d0b58826e7eb9a0f2af7d693de319f2ef775fffcda244b9f6", "1xmr8jicvzszfzpz46g37mlpvbzjl2wpwvl2b05psipssyp1sm8h"},
		{"random sha256", "a8e09ffdb63907329cc172b15c2a11d4b347006d1b1b3724838abad4399095c7", "1iwmj0wx9flahcj3f6qvdl04gcyl24m5rcbjq6f341rrnvyrzq58"},
		{"random sha256 2", "62425f3b009d40cc098dcc6f6a02969f3035e260d3b8831078252f9f4a1f7d3a", "0fkx3x59ybr5g0887f6kc3i3ac4zjq16lvycil4wqh4x00xmyhk2"},
		{"sha256 all ones: top character has one bit", strings.Repeat("ff", 32), "1" + strings.Repeat("z", 51)},
		{"sha256 first byte is the last character", "01" + strings.Repeat("00", 31), strings.Repeat("0", 51) + "1"},
		{"sha256 last byte is the first character", strings.Repeat("00", 31) + "80", "1" + strings.Repeat("0", 51)},
		{"random sha1 (store path length)", "cb41c2b3b48fe60f77563c11bbd9866ee29cf289", "i7r9rqkfhvcvn49warvhzrlgnjrw4hfb"},
		{"sha1 all ones: no spare bits", strings.Repeat("ff", 20), strings.Repeat("z", 32)},
		{"sha1 high bit", strings.Repeat("00", 19) + "80", "h" + strings.Repeat("0", 31)},
		{"random md5", "1cf835654865aadb825e0189114d9f76", "3nkx6i3281bs1dpak591jkby0w"},
		{"random sha512", "e665f9ab9c116040732858ea84eedb40a7afc7114e0128e588de3229a36a2d8bc9cf9ad9ee1ea2815bc0c6f8c0900cac37fc60690a3a5e10fc872ec35d4e5a32", "0r5lkjxqcp8gz0hbqx0lsb0zhvsq34hq3wcdh2vh6i1xvnrkb7wk2rddaijjcnyi3jjh0af273sz9s0vgp89sjq51rl0q0ikjmzjrg6"},
		{"empty", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checkVector(t, tc.hex, tc.nix32)
		})
	}
}

// TestNixHashVectors checks the bulk vectors in testdata, made by testdata/gen-vectors.sh.
func TestNixHashVectors(t *testing.T) {
	f, err := os.Open("testdata/nix-hash-vectors.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 3 {
			t.Fatalf("malformed vector line %q", sc.Text())
		}
		t.Run(fields[0]+"/"+fields[2], func(t *testing.T) {
			checkVector(t, fields[1], fields[2])
		})
		n++
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if n < 20 {
		t.Fatalf("only %d vectors in testdata", n)
	}
}

func checkVector(t *testing.T, hexStr, nix32 string) {
	t.Helper()
	raw, err := hex.DecodeString(hexStr)
	if err != nil {
		t.Fatal(err)
	}
	if got := EncodeToString(raw); got != nix32 {
		t.Errorf("EncodeToString(%s) = %s, want %s", hexStr, got, nix32)
	}
	if got := EncodedLen(len(raw)); got != len(nix32) {
		t.Errorf("EncodedLen(%d) = %d, want %d", len(raw), got, len(nix32))
	}
	if got := DecodedLen(len(nix32)); got != len(raw) {
		t.Errorf("DecodedLen(%d) = %d, want %d", len(nix32), got, len(raw))
	}
	dec, err := DecodeString(nix32)
	if err != nil {
		t.Fatalf("DecodeString(%s): %v", nix32, err)
	}
	if !bytes.Equal(dec, raw) {
		t.Errorf("DecodeString(%s) = %x, want %s", nix32, dec, hexStr)
	}
}

func TestLengths(t *testing.T) {
	tests := []struct{ bytes, chars int }{
		{0, 0}, {1, 2}, {2, 4}, {5, 8}, {16, 26}, {20, 32}, {32, 52}, {64, 103},
	}
	for _, tc := range tests {
		if got := EncodedLen(tc.bytes); got != tc.chars {
			t.Errorf("EncodedLen(%d) = %d, want %d", tc.bytes, got, tc.chars)
		}
		if got := DecodedLen(tc.chars); got != tc.bytes {
			t.Errorf("DecodedLen(%d) = %d, want %d", tc.chars, got, tc.bytes)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	valid := "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
	tests := []struct {
		name, in string
		want     string // a regexp the error must match
	}{
		{"one character too few", valid[1:], `length 51 is not the encoded length`},
		{"two characters too many", valid + "00", `length 54 is not the encoded length`},
		{"single character", "1", `length 1 is not the encoded length`},
		{"letter e is not in the alphabet", valid[:51] + "e", `invalid character "e" at offset 51`},
		{"letter o", "o" + valid[1:], `invalid character "o" at offset 0`},
		{"letter t", valid[:10] + "t" + valid[11:], `invalid character "t" at offset 10`},
		{"letter u", valid[:20] + "u" + valid[21:], `invalid character "u" at offset 20`},
		{"upper case", strings.ToUpper(valid), `invalid character "M" at offset 1`},
		{"sha256 padding bits set", "2" + strings.Repeat("z", 51), `leading character "2" .* sets bits beyond 32 bytes`},
		{"one-byte padding bits", "80", `leading character "8" .* sets bits beyond 1 bytes`},
		{"non-ascii", valid[:51] + "\xff", `invalid character "\\xff" at offset 51`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := DecodeString(tc.in)
			if err == nil {
				t.Fatalf("DecodeString(%q) = %x, want error matching %s", tc.in, b, tc.want)
			}
			if !regexp.MustCompile(tc.want).MatchString(err.Error()) {
				t.Fatalf("error %q does not match %q", err, tc.want)
			}
		})
	}
}

func FuzzRoundTrip(f *testing.F) {
	for _, seed := range [][]byte{nil, {0}, {0xff}, bytes.Repeat([]byte{0xff}, 20), bytes.Repeat([]byte{0xa5}, 32)} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s := EncodeToString(b)
		if len(s) != EncodedLen(len(b)) {
			t.Fatalf("len(EncodeToString(%x)) = %d, EncodedLen says %d", b, len(s), EncodedLen(len(b)))
		}
		got, err := DecodeString(s)
		if err != nil {
			t.Fatalf("DecodeString(EncodeToString(%x)) = %v", b, err)
		}
		if !bytes.Equal(got, b) {
			t.Fatalf("round trip of %x gave %x", b, got)
		}
		// Treat the input as text too: whatever decodes must re-encode to itself, or two
		// spellings of one hash would exist.
		if dec, err := DecodeString(string(b)); err == nil {
			if back := EncodeToString(dec); back != string(b) {
				t.Fatalf("DecodeString(%q) re-encodes as %q", b, back)
			}
		}
	})
}
