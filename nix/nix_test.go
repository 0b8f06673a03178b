package nix

import (
	"regexp"
	"strings"
	"testing"
)

func TestHashPart(t *testing.T) {
	tests := []struct {
		in, want string
		err      string // a regexp the error must match, "" for success
	}{
		{"/nix/store/mydivsscdmlnb3pjc4n1y3dlvzs0v3gd-x", "mydivsscdmlnb3pjc4n1y3dlvzs0v3gd", ""},
		{"8cz6v018ji9ykbihshlzf7v7akip0hma-hello-dep.drv", "8cz6v018ji9ykbihshlzf7v7akip0hma", ""},
		{"zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-a+b-1.0_?=", "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz", ""},
		{"/nix/store/mydivsscdmlnb3pjc4n1y3dlvzs0v3gd-x/bin/sh", "", `is not a path directly under /nix/store`},
		{"/tmp/mydivsscdmlnb3pjc4n1y3dlvzs0v3gd-x", "", `is not a path directly under /nix/store`},
		{"mydivsscdmlnb3pjc4n1y3dlvzs0v3gd", "", `is not <32-character hash>-<name>`},
		{"mydivsscdmlnb3pjc4n1y3dlvzs0v3gd-", "", `is not <32-character hash>-<name>`},
		{"mydivsscdmlnb3pjc4n1y3dlvzs0v3g-xy", "", `is not <32-character hash>-<name>`},
		{"MYDIVSSCDMLNB3PJC4N1Y3DLVZS0V3GD-x", "", `bad hash part: .*invalid character "M"`},
		{"eydivsscdmlnb3pjc4n1y3dlvzs0v3gd-x", "", `bad hash part: .*invalid character "e" at offset 0`},
		{"", "", `store path name "" is not`},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := HashPart(tc.in)
			if tc.err != "" {
				if err == nil || !regexp.MustCompile(tc.err).MatchString(err.Error()) {
					t.Fatalf("HashPart(%q) = %q, %v; want error matching %s", tc.in, got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("HashPart(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
		})
	}
}

// The spellings of each hash were printed or accepted by Nix 2.8 (nix-hash --to-base32/--to-base16,
// nix hash to-sri, nix hash to-base32).
func TestNormalizeHash(t *testing.T) {
	const empty = "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
	tests := []struct {
		in, want string
		err      string // a regexp the error must match, "" for success
	}{
		{empty, empty, ""},
		{"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", empty, ""},
		{"sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855", empty, ""},
		{"sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=", empty, ""},
		{"sha256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=", empty, ""},
		{"sha256:baeabdb75c223d171800c17b05c5e7e8e9980723a90eb6ffcc632a305afc5a42", "sha256:0hjszid30ak3rkzvc3m94c3risg8wz2hayy100c1fg92bjvvvsms", ""},
		{"sha256-kxfVRCkz+5QbW3poBdaAmAYhVTkrXt+UQZDSYQWWuiw=", "sha256:0b5sjq2n3llh86adypib75aj21lqh3b0as3sbcdr9yrk552da5wk", ""},
		// Nix 2.8 accepts these sloppy spellings too.
		{"sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU", empty, ""},
		{"sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU==", empty, ""},
		{"sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFV=", empty, ""},
		{"sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuF!=", "", `bad SRI base64: illegal base64 data at input byte 42`},
		{"sha256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuF!=", "", `illegal base64 data at input byte 42`},
		{"sha256-AAAA", "", `is 3 bytes, not the 32 of SHA-256`},
		{"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85g", "", `invalid byte`},
		{"sha256:" + strings.Repeat("z", 52), "", `leading character "z" .* sets bits beyond 32 bytes`},
		{"sha256:", "", `0 characters is no encoding of a SHA-256 hash`},
		{"sha1:a9993e364706816aba3e25717850c26c9cd0d89d", "", `algorithm "sha1" is not sha256`},
		{"sha512-z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg==", "", `algorithm "sha512" is not sha256`},
		{"0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73", "", `has no sha256: or sha256- prefix`},
		{"SHA256:" + empty[7:], "", `algorithm "SHA256" is not sha256`},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := NormalizeHash(tc.in)
			if tc.err != "" {
				if err == nil || !regexp.MustCompile(tc.err).MatchString(err.Error()) {
					t.Fatalf("NormalizeHash(%q) = %q, %v; want error matching %s", tc.in, got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("NormalizeHash(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestHashPartOf(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{"/nix/store/mydivsscdmlnb3pjc4n1y3dlvzs0v3gd-x", "mydivsscdmlnb3pjc4n1y3dlvzs0v3gd", ""},
		{"mydivsscdmlnb3pjc4n1y3dlvzs0v3gd-x", "mydivsscdmlnb3pjc4n1y3dlvzs0v3gd", ""},
		{"mydivsscdmlnb3pjc4n1y3dlvzs0v3gd", "mydivsscdmlnb3pjc4n1y3dlvzs0v3gd", ""},
		{"mydivsscdmlnb3pjc4n1y3dlvzs0v3gd.narinfo", "", "names no store path"},
		{"eydivsscdmlnb3pjc4n1y3dlvzs0v3gd", "", "not nixbase32"},
		{"result", "", "names no store path"},
	} {
		got, err := HashPartOf(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("HashPartOf(%q) = %q, %v; want an error saying %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("HashPartOf(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}
