package narinfo

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/hearth-ci/hearth/nix"
)

// The files under testdata/nix-2.8 were written by `nix copy --to file://…` of Nix 2.8.0 for the
// paths of testdata/nix-2.8/paths.nix, once per compression and once without a signing key.
func nixFiles(t testing.TB) []string {
	t.Helper()
	files, err := filepath.Glob("testdata/nix-2.8/*/*.narinfo")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 16 {
		t.Fatalf("only %d narinfo fixtures", len(files))
	}
	return files
}

func parseFile(t *testing.T, path string) *NarInfo {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n, err := Parse(f)
	if err != nil {
		t.Fatalf("Parse(%s): %v", path, err)
	}
	return n
}

func TestRoundTripNixFiles(t *testing.T) {
	for _, path := range nixFiles(t) {
		t.Run(path, func(t *testing.T) {
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			n := parseFile(t, path)
			if got := n.String(); got != string(want) {
				t.Fatalf("String() differs from the file Nix wrote:\n--- got\n%s--- want\n%s", got, want)
			}
			hash, err := nix.HashPart(n.StorePath)
			if err != nil {
				t.Fatal(err)
			}
			if hash+".narinfo" != filepath.Base(path) {
				t.Fatalf("HashPart(%s) = %s, but Nix named the file %s", n.StorePath, hash, filepath.Base(path))
			}
		})
	}
}

func TestParseNixFiles(t *testing.T) {
	tests := []struct {
		file string
		want NarInfo
	}{
		{"testdata/nix-2.8/zstd/scfbg087m326w0a0hmyi3j4j7f301sw7.narinfo", NarInfo{
			StorePath:   "/nix/store/scfbg087m326w0a0hmyi3j4j7f301sw7-hello-dep",
			URL:         "nar/0q288qgfbxwhjpwijx2k8fq43akb9nhx809vg14w5wnnjp0vchj3.nar.zst",
			Compression: "zstd",
			FileHash:    "sha256:0q288qgfbxwhjpwijx2k8fq43akb9nhx809vg14w5wnnjp0vchj3",
			FileSize:    165,
			NarHash:     "sha256:0b5sjq2n3llh86adypib75aj21lqh3b0as3sbcdr9yrk552da5wk",
			NarSize:     216,
			References:  []string{"5v921zip2h408qffqdqhsfbb6m37n0hg-note.txt", "mydivsscdmlnb3pjc4n1y3dlvzs0v3gd-x"},
			Deriver:     "8cz6v018ji9ykbihshlzf7v7akip0hma-hello-dep.drv",
			Sigs:        []string{"hearth-test-1:briMfPFmlJhljdvoHY5CK+Ebc8DlAyxut72ayry4VIMUuQA9Y75GkBVhmo813Oep3YeKOberMuQp6wIxmgR2Aw=="},
		}},
		{"testdata/nix-2.8/unsigned/mydivsscdmlnb3pjc4n1y3dlvzs0v3gd.narinfo", NarInfo{
			StorePath:   "/nix/store/mydivsscdmlnb3pjc4n1y3dlvzs0v3gd-x",
			URL:         "nar/1iqbyx6j3vq1h2mfrb568ksa0v245pnc73r2akw5045n3zx9czh8.nar.zst",
			Compression: "zstd",
			FileHash:    "sha256:1iqbyx6j3vq1h2mfrb568ksa0v245pnc73r2akw5045n3zx9czh8",
			FileSize:    134,
			NarHash:     "sha256:1jpg5v8rcf4d08rlpq51vnd1w800l64h34r0bw4vkb6z3qlk089k",
			NarSize:     288,
			CA:          "fixed:r:sha256:1jpg5v8rcf4d08rlpq51vnd1w800l64h34r0bw4vkb6z3qlk089k",
		}},
		{"testdata/nix-2.8/none/21ms7ghwn3cz7qfanbs3xyg5wm36a4y2.narinfo", NarInfo{
			StorePath:   "/nix/store/21ms7ghwn3cz7qfanbs3xyg5wm36a4y2-fixed",
			URL:         "nar/07y32ljqjzpgw56dgrwfs7f0illrfg8bgkfq0d89p01m677grk1p.nar",
			Compression: "none",
			FileHash:    "sha256:07y32ljqjzpgw56dgrwfs7f0illrfg8bgkfq0d89p01m677grk1p",
			FileSize:    120,
			NarHash:     "sha256:07y32ljqjzpgw56dgrwfs7f0illrfg8bgkfq0d89p01m677grk1p",
			NarSize:     120,
			Deriver:     "m3akyqgdsdfpncypqdn6ilkyajw5gg44-fixed.drv",
			Sigs:        []string{"hearth-test-1:yua3kapKorrftMi0fVdvlywQhHyuciCf1g0e3QzBTIbAkKCiY0ZGHbjNos7Jlbmz6fFwL2d0lXAq4fttR7NQCA=="},
			CA:          "fixed:sha256:0d75vbn546fz9d9ip0f03daqhpm99h3fv14ci4afcmk3ir0p2c0c",
		}},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			if got := parseFile(t, tc.file); !reflect.DeepEqual(*got, tc.want) {
				t.Fatalf("Parse:\n got %#v\nwant %#v", *got, tc.want)
			}
		})
	}
}

// The signing package verifies the real signatures over these same strings.
func TestFingerprintNixFiles(t *testing.T) {
	tests := []struct{ file, want string }{
		{"testdata/nix-2.8/zstd/scfbg087m326w0a0hmyi3j4j7f301sw7.narinfo",
			"1;/nix/store/scfbg087m326w0a0hmyi3j4j7f301sw7-hello-dep;sha256:0b5sjq2n3llh86adypib75aj21lqh3b0as3sbcdr9yrk552da5wk;216;/nix/store/5v921zip2h408qffqdqhsfbb6m37n0hg-note.txt,/nix/store/mydivsscdmlnb3pjc4n1y3dlvzs0v3gd-x"},
		{"testdata/nix-2.8/xz/5v921zip2h408qffqdqhsfbb6m37n0hg.narinfo",
			"1;/nix/store/5v921zip2h408qffqdqhsfbb6m37n0hg-note.txt;sha256:1whp9zz00sl738xv9m7jzl6rkfh5dfxmfn7jm9jj24n1nl190rfn;168;/nix/store/mydivsscdmlnb3pjc4n1y3dlvzs0v3gd-x"},
		{"testdata/nix-2.8/none/21ms7ghwn3cz7qfanbs3xyg5wm36a4y2.narinfo",
			"1;/nix/store/21ms7ghwn3cz7qfanbs3xyg5wm36a4y2-fixed;sha256:07y32ljqjzpgw56dgrwfs7f0illrfg8bgkfq0d89p01m677grk1p;120;"},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			got, err := parseFile(t, tc.file).Fingerprint()
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("Fingerprint:\n got %s\nwant %s", got, tc.want)
			}
		})
	}
}

func TestFingerprint(t *testing.T) {
	base := func(edit func(n *NarInfo)) *NarInfo {
		n := &NarInfo{
			StorePath: "/nix/store/scfbg087m326w0a0hmyi3j4j7f301sw7-hello-dep",
			NarHash:   "sha256:0b5sjq2n3llh86adypib75aj21lqh3b0as3sbcdr9yrk552da5wk",
			NarSize:   216,
		}
		edit(n)
		return n
	}
	const prefix = "1;/nix/store/scfbg087m326w0a0hmyi3j4j7f301sw7-hello-dep;sha256:0b5sjq2n3llh86adypib75aj21lqh3b0as3sbcdr9yrk552da5wk;216;"
	tests := []struct {
		name string
		n    *NarInfo
		want string // the fingerprint, or a regexp the error must match when wantErr
		err  bool
	}{
		{"references sorted and deduplicated", base(func(n *NarInfo) {
			n.References = []string{"mydivsscdmlnb3pjc4n1y3dlvzs0v3gd-x", "5v921zip2h408qffqdqhsfbb6m37n0hg-note.txt", "mydivsscdmlnb3pjc4n1y3dlvzs0v3gd-x"}
		}), prefix + "/nix/store/5v921zip2h408qffqdqhsfbb6m37n0hg-note.txt,/nix/store/mydivsscdmlnb3pjc4n1y3dlvzs0v3gd-x", false},
		{"hex NarHash signed as nix32", base(func(n *NarInfo) {
			n.NarHash = "sha256:9317d5442933fb941b5b7a6805d68098062155392b5edf944190d2610596ba2c"
		}), prefix, false},
		{"SRI NarHash signed as nix32", base(func(n *NarInfo) {
			n.NarHash = "sha256-kxfVRCkz+5QbW3poBdaAmAYhVTkrXt+UQZDSYQWWuiw="
		}), prefix, false},
		{"zero NarSize", base(func(n *NarInfo) { n.NarSize = 0 }), `NarSize is zero`, true},
		{"bad NarHash", base(func(n *NarInfo) { n.NarHash = "md5:abc" }), `NarHash: hash "md5:abc": algorithm "md5" is not sha256`, true},
		{"bad reference", base(func(n *NarInfo) { n.References = []string{"../etc"} }), `References: store path name "\.\./etc" is not <32-character hash>-<name>`, true},
		{"bad StorePath", base(func(n *NarInfo) { n.StorePath = "/usr/bin" }), `StorePath: "/usr/bin" is not a path directly under /nix/store`, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.n.Fingerprint()
			if tc.err {
				if err == nil || !regexp.MustCompile(tc.want).MatchString(err.Error()) {
					t.Fatalf("Fingerprint() = %q, %v; want error matching %s", got, err, tc.want)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Fingerprint() = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

const minimal = "StorePath: /nix/store/mydivsscdmlnb3pjc4n1y3dlvzs0v3gd-x\n" +
	"URL: nar/x.nar\n" +
	"NarHash: sha256:1jpg5v8rcf4d08rlpq51vnd1w800l64h34r0bw4vkb6z3qlk089k\n" +
	"NarSize: 288\n"

func TestParseVariations(t *testing.T) {
	want := func(edit func(n *NarInfo)) NarInfo {
		n := NarInfo{
			StorePath:   "/nix/store/mydivsscdmlnb3pjc4n1y3dlvzs0v3gd-x",
			URL:         "nar/x.nar",
			Compression: "bzip2",
			NarHash:     "sha256:1jpg5v8rcf4d08rlpq51vnd1w800l64h34r0bw4vkb6z3qlk089k",
			NarSize:     288,
		}
		edit(&n)
		return n
	}
	same := func(*NarInfo) {}
	tests := []struct {
		name, in string
		want     NarInfo
	}{
		{"no Compression means bzip2", minimal, want(same)},
		{"empty Compression means bzip2", minimal + "Compression: \n", want(same)},
		{"no final newline", strings.TrimSuffix(minimal, "\n"), want(same)},
		{"blank lines", "\n" + minimal + "\n\n", want(same)},
		{"unknown fields ignored", "Provenance: {}\n" + minimal + "Foo: bar\n", want(same)},
		{"bare References:", minimal + "References:\nDeriver: 8cz6v018ji9ykbihshlzf7v7akip0hma-hello-dep.drv\n", want(func(n *NarInfo) {
			n.Deriver = "8cz6v018ji9ykbihshlzf7v7akip0hma-hello-dep.drv"
		})},
		{"unknown-deriver is none", minimal + "Deriver: unknown-deriver\n", want(same)},
		{"extra spaces between references", minimal + "References:  5v921zip2h408qffqdqhsfbb6m37n0hg-note.txt   mydivsscdmlnb3pjc4n1y3dlvzs0v3gd-x \n", want(func(n *NarInfo) {
			n.References = []string{"5v921zip2h408qffqdqhsfbb6m37n0hg-note.txt", "mydivsscdmlnb3pjc4n1y3dlvzs0v3gd-x"}
		})},
		{"references kept in file order", minimal + "References: mydivsscdmlnb3pjc4n1y3dlvzs0v3gd-x 5v921zip2h408qffqdqhsfbb6m37n0hg-note.txt\n", want(func(n *NarInfo) {
			n.References = []string{"mydivsscdmlnb3pjc4n1y3dlvzs0v3gd-x", "5v921zip2h408qffqdqhsfbb6m37n0hg-note.txt"}
		})},
		{"hex hashes normalized", strings.Replace(minimal, "1jpg5v8rcf4d08rlpq51vnd1w800l64h34r0bw4vkb6z3qlk089k", "0b5sjq2n3llh86adypib75aj21lqh3b0as3sbcdr9yrk552da5wk", 1) +
			"FileHash: sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n", want(func(n *NarInfo) {
			n.NarHash = "sha256:0b5sjq2n3llh86adypib75aj21lqh3b0as3sbcdr9yrk552da5wk"
			n.FileHash = "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
		})},
		{"SRI FileHash normalized", minimal + "FileHash: sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n", want(func(n *NarInfo) {
			n.FileHash = "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
		})},
		{"several signatures in file order, System, CA", minimal + "System: x86_64-linux\nSig: b:2\nSig: a:1\nCA: text:sha256:12zcv04zrih4hr5msxrajn4pn2m1w88d3kaq3iaa19qc1m5p1wy3\n", want(func(n *NarInfo) {
			n.System = "x86_64-linux"
			n.Sigs = []string{"b:2", "a:1"}
			n.CA = "text:sha256:12zcv04zrih4hr5msxrajn4pn2m1w88d3kaq3iaa19qc1m5p1wy3"
		})},
		{"value keeps colons and inner spaces", strings.Replace(minimal, "URL: nar/x.nar", "URL: https://h/nar/a b:c", 1), want(func(n *NarInfo) {
			n.URL = "https://h/nar/a b:c"
		})},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse(strings.NewReader(tc.in))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !reflect.DeepEqual(*got, tc.want) {
				t.Fatalf("Parse:\n got %#v\nwant %#v", *got, tc.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, in string
		want     string // a regexp the error must match
	}{
		{"empty", "", `^narinfo: StorePath missing$`},
		{"no StorePath", strings.Replace(minimal, "StorePath: /nix/store/mydivsscdmlnb3pjc4n1y3dlvzs0v3gd-x\n", "", 1), `^narinfo: StorePath missing$`},
		{"no URL", strings.Replace(minimal, "URL: nar/x.nar\n", "", 1), `^narinfo: URL missing$`},
		{"empty URL", strings.Replace(minimal, "URL: nar/x.nar\n", "URL: \n", 1), `^narinfo: URL missing$`},
		{"no NarHash", strings.Replace(minimal, "NarHash: sha256:1jpg5v8rcf4d08rlpq51vnd1w800l64h34r0bw4vkb6z3qlk089k\n", "", 1), `^narinfo: NarHash missing$`},
		{"no NarSize", strings.Replace(minimal, "NarSize: 288\n", "", 1), `^narinfo: NarSize missing or zero$`},
		{"zero NarSize", strings.Replace(minimal, "NarSize: 288", "NarSize: 0", 1), `^narinfo: NarSize missing or zero$`},
		{"no colon", minimal + "garbage\n", `^narinfo: line 5: "garbage" has no ':'`},
		{"no space after colon", minimal + "System:x86_64-linux\n", `^narinfo: line 5: "System:x86_64-linux": no space after "System:"`},
		{"negative NarSize", strings.Replace(minimal, "NarSize: 288", "NarSize: -1", 1), `^narinfo: line 4: NarSize: "-1" is not a byte count`},
		{"NarSize overflow", strings.Replace(minimal, "NarSize: 288", "NarSize: 18446744073709551616", 1), `line 4: NarSize: "18446744073709551616" is not a byte count: .*out of range`},
		{"FileSize not a number", minimal + "FileSize: 1k\n", `line 5: FileSize: "1k" is not a byte count`},
		{"NarHash not sha256", strings.Replace(minimal, "sha256:1jpg", "sha512:1jpg", 1), `line 3: NarHash: hash "sha512:1jpg.*": algorithm "sha512" is not sha256`},
		{"NarHash without algorithm", strings.Replace(minimal, "sha256:1jpg", "1jpg", 1), `line 3: NarHash: hash "1jpg.*" has no sha256: or sha256- prefix`},
		{"NarHash bad nix32", strings.Replace(minimal, "sha256:1jpg", "sha256:1jpe", 1), `line 3: NarHash: .*invalid character "e" at offset 3`},
		{"NarHash wrong length", strings.Replace(minimal, "sha256:1jpg", "sha256:jpg", 1), `line 3: NarHash: hash "sha256:jpg.*": 51 characters is no encoding of a SHA-256 hash`},
		{"FileHash empty", minimal + "FileHash: \n", `line 5: FileHash: hash "" has no sha256: or sha256- prefix`},
		{"StorePath outside the store", strings.Replace(minimal, "/nix/store/", "/gnu/store/", 1), `line 1: StorePath: "/gnu/store/mydivsscdmlnb3pjc4n1y3dlvzs0v3gd-x" is not a path directly under /nix/store`},
		{"StorePath in a subdirectory", strings.Replace(minimal, "-x\n", "-x/bin\n", 1), `line 1: StorePath: ".*-x/bin" is not a path directly under /nix/store`},
		{"StorePath bad hash", strings.Replace(minimal, "mydivsscdm", "mydivsscdu", 1), `line 1: StorePath: store path name "mydivsscdu.*" has a bad hash part: .*invalid character "u"`},
		{"StorePath without name", strings.Replace(minimal, "-x\n", "\n", 1), `line 1: StorePath: store path name "mydivsscdmlnb3pjc4n1y3dlvzs0v3gd" is not <32-character hash>-<name>`},
		{"StorePath bad name", strings.Replace(minimal, "-x\n", "-x y\n", 1), `line 1: StorePath: store path name ".*-x y": character " " is not allowed`},
		{"reference too short", minimal + "References: abc\n", `line 5: References: store path name "abc" is not <32-character hash>-<name>`},
		{"reference with a slash", minimal + "References: /nix/store/mydivsscdmlnb3pjc4n1y3dlvzs0v3gd-x\n", `line 5: References: store path name "/nix/store/.*" is not <32-character hash>-<name>`},
		{"reference with a long name", minimal + "References: mydivsscdmlnb3pjc4n1y3dlvzs0v3gd-" + strings.Repeat("a", 212) + "\n", `line 5: References: .*name longer than 211 characters`},
		{"bad deriver", minimal + "Deriver: foo.drv\n", `line 5: Deriver: store path name "foo.drv" is not`},
		{"empty deriver", minimal + "Deriver: \n", `line 5: Deriver: store path name "" is not`},
		{"bad CA", minimal + "CA: sha256:abc\n", `line 5: CA: "sha256:abc" is neither text:… nor fixed:…`},
		{"repeated StorePath", minimal + "StorePath: /nix/store/5v921zip2h408qffqdqhsfbb6m37n0hg-note.txt\n", `^narinfo: line 5: StorePath repeats the field of line 1$`},
		{"repeated References", minimal + "References: \nReferences: \n", `line 6: References repeats the field of line 5`},
		{"repeated empty CA", minimal + "CA: \nCA: \n", `line 6: CA repeats the field of line 5`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n, err := Parse(strings.NewReader(tc.in))
			if err == nil {
				t.Fatalf("Parse = %+v, want error matching %s", n, tc.want)
			}
			if !regexp.MustCompile(tc.want).MatchString(err.Error()) {
				t.Fatalf("error %q does not match %q", err, tc.want)
			}
		})
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, os.ErrDeadlineExceeded }

func TestParseReadError(t *testing.T) {
	_, err := Parse(failingReader{})
	if err == nil || !strings.Contains(err.Error(), "narinfo: reading line 1: i/o timeout") {
		t.Fatalf("Parse = %v, want the read error with its line", err)
	}
}

func TestString(t *testing.T) {
	tests := []struct {
		name string
		n    NarInfo
		want string
	}{
		{"only required fields", NarInfo{
			StorePath: "/nix/store/mydivsscdmlnb3pjc4n1y3dlvzs0v3gd-x",
			URL:       "nar/x.nar",
			NarHash:   "sha256:1jpg5v8rcf4d08rlpq51vnd1w800l64h34r0bw4vkb6z3qlk089k",
			NarSize:   288,
		}, minimal + "References: \n"},
		{"every field, in Nix's order", NarInfo{
			CA:          "fixed:r:sha256:1jpg5v8rcf4d08rlpq51vnd1w800l64h34r0bw4vkb6z3qlk089k",
			Sigs:        []string{"k1:AAAA", "k2:BBBB"},
			System:      "x86_64-linux",
			Deriver:     "8cz6v018ji9ykbihshlzf7v7akip0hma-hello-dep.drv",
			References:  []string{"5v921zip2h408qffqdqhsfbb6m37n0hg-note.txt", "mydivsscdmlnb3pjc4n1y3dlvzs0v3gd-x"},
			NarSize:     288,
			NarHash:     "sha256:1jpg5v8rcf4d08rlpq51vnd1w800l64h34r0bw4vkb6z3qlk089k",
			FileSize:    134,
			FileHash:    "sha256:1iqbyx6j3vq1h2mfrb568ksa0v245pnc73r2akw5045n3zx9czh8",
			Compression: "zstd",
			URL:         "nar/1iqbyx6j3vq1h2mfrb568ksa0v245pnc73r2akw5045n3zx9czh8.nar.zst",
			StorePath:   "/nix/store/mydivsscdmlnb3pjc4n1y3dlvzs0v3gd-x",
		}, `StorePath: /nix/store/mydivsscdmlnb3pjc4n1y3dlvzs0v3gd-x
URL: nar/1iqbyx6j3vq1h2mfrb568ksa0v245pnc73r2akw5045n3zx9czh8.nar.zst
Compression: zstd
FileHash: sha256:1iqbyx6j3vq1h2mfrb568ksa0v245pnc73r2akw5045n3zx9czh8
FileSize: 134
NarHash: sha256:1jpg5v8rcf4d08rlpq51vnd1w800l64h34r0bw4vkb6z3qlk089k
NarSize: 288
References: 5v921zip2h408qffqdqhsfbb6m37n0hg-note.txt mydivsscdmlnb3pjc4n1y3dlvzs0v3gd-x
Deriver: 8cz6v018ji9ykbihshlzf7v7akip0hma-hello-dep.drv
System: x86_64-linux
Sig: k1:AAAA
Sig: k2:BBBB
CA: fixed:r:sha256:1jpg5v8rcf4d08rlpq51vnd1w800l64h34r0bw4vkb6z3qlk089k
`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.n.String()
			if got != tc.want {
				t.Fatalf("String():\n%s\nwant:\n%s", got, tc.want)
			}
			back, err := Parse(strings.NewReader(got))
			if err != nil {
				t.Fatalf("Parse(String()): %v", err)
			}
			if tc.n.Compression == "" {
				if back.Compression != "bzip2" {
					t.Fatalf("omitted Compression reads back as %q, want bzip2", back.Compression)
				}
				back.Compression = ""
			}
			if back.String() != got {
				t.Fatalf("Parse(String()).String() = %q, want %q", back.String(), got)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, path := range nixFiles(f) {
		b, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b))
	}
	f.Add(minimal)
	f.Add(minimal + "References:\nDeriver: unknown-deriver\nCompression: \nSig: \nCA: \n")
	f.Fuzz(func(t *testing.T, in string) {
		n1, err := Parse(strings.NewReader(in))
		if err != nil {
			return
		}
		s1 := n1.String()
		n2, err := Parse(strings.NewReader(s1))
		if err != nil {
			t.Fatalf("Parse(String()) of %q: %v\nString() was %q", in, err, s1)
		}
		if !reflect.DeepEqual(n1, n2) {
			t.Fatalf("Parse(String()) of %q changed it:\n got %#v\nwant %#v", in, n2, n1)
		}
		if s2 := n2.String(); s2 != s1 {
			t.Fatalf("String() not stable for %q:\n%q\n%q", in, s1, s2)
		}
	})
}
