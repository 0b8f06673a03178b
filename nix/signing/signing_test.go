package signing

import (
	"crypto/ed25519"
	"encoding/base64"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// testdata/hearth-test-1.{sk,pk} were written by Nix 2.8's
// `nix-store --generate-binary-cache-key hearth-test-1 sk pk` (without a final newline), and
// testdata/*.narinfo by `nix copy --to 'file://…?secret-key=sk'` with that key.
func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func nixKeys(t *testing.T) (SecretKey, PublicKey) {
	t.Helper()
	sk, err := LoadSecretKey("testdata/hearth-test-1.sk")
	if err != nil {
		t.Fatal(err)
	}
	pk, err := ParsePublicKey(readFile(t, "testdata/hearth-test-1.pk"))
	if err != nil {
		t.Fatal(err)
	}
	return sk, pk
}

func TestNixKeyPair(t *testing.T) {
	sk, pk := nixKeys(t)
	if sk.Name != "hearth-test-1" || pk.Name != "hearth-test-1" {
		t.Fatalf("names %q and %q, want hearth-test-1", sk.Name, pk.Name)
	}
	if got := sk.Public(); got.Name != pk.Name || !got.Key.Equal(pk.Key) {
		t.Fatalf("Public() = %v, want the public key Nix wrote, %v", got, pk)
	}
	if got, want := sk.String(), readFile(t, "testdata/hearth-test-1.sk"); got != want {
		t.Fatalf("SecretKey.String() differs from Nix's file:\n got %s\nwant %s", got, want)
	}
	if got, want := pk.String(), readFile(t, "testdata/hearth-test-1.pk"); got != want {
		t.Fatalf("PublicKey.String() = %s, want %s as Nix wrote it", got, want)
	}
}

// The fingerprints are written out by hand, in the format of Nix's ValidPathInfo::fingerprint;
// the narinfo package's tests derive the same strings from the same files.
func TestNixSignatures(t *testing.T) {
	sk, pk := nixKeys(t)
	tests := []struct{ file, fingerprint string }{
		{"testdata/hello-dep.narinfo", "1;/nix/store/scfbg087m326w0a0hmyi3j4j7f301sw7-hello-dep;sha256:0b5sjq2n3llh86adypib75aj21lqh3b0as3sbcdr9yrk552da5wk;216;/nix/store/5v921zip2h408qffqdqhsfbb6m37n0hg-note.txt,/nix/store/mydivsscdmlnb3pjc4n1y3dlvzs0v3gd-x"},
		{"testdata/fixed.narinfo", "1;/nix/store/21ms7ghwn3cz7qfanbs3xyg5wm36a4y2-fixed;sha256:07y32ljqjzpgw56dgrwfs7f0illrfg8bgkfq0d89p01m677grk1p;120;"},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			var sig string
			for line := range strings.Lines(readFile(t, tc.file)) {
				if v, ok := strings.CutPrefix(line, "Sig: "); ok {
					sig = strings.TrimSuffix(v, "\n")
				}
			}
			if sig == "" {
				t.Fatalf("%s has no Sig line", tc.file)
			}
			if !pk.Verify(tc.fingerprint, sig) {
				t.Fatalf("Nix's signature %s does not verify", sig)
			}
			// ed25519 signatures are deterministic, so signing with the same key must give
			// Nix's very line.
			if got := sk.Sign(tc.fingerprint); got != sig {
				t.Fatalf("Sign() = %s, Nix wrote %s", got, sig)
			}
		})
	}
}

func TestVerifyRejects(t *testing.T) {
	sk, pk := nixKeys(t)
	const fp = "1;/nix/store/21ms7ghwn3cz7qfanbs3xyg5wm36a4y2-fixed;sha256:07y32ljqjzpgw56dgrwfs7f0illrfg8bgkfq0d89p01m677grk1p;120;"
	good := sk.Sign(fp)
	_, rawSig, _ := strings.Cut(good, ":")
	sigBytes, _ := base64.StdEncoding.DecodeString(rawSig)
	flipped := append([]byte(nil), sigBytes...)
	flipped[10] ^= 1
	other, err := Generate("hearth-test-1")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, fingerprint, sig string
		key                    PublicKey
	}{
		{"another fingerprint", strings.Replace(fp, ";120;", ";121;", 1), good, pk},
		{"another key name", fp, "hearth-test-2:" + rawSig, pk},
		{"same name, another key", fp, good, other.Public()},
		{"flipped bit", fp, "hearth-test-1:" + base64.StdEncoding.EncodeToString(flipped), pk},
		{"no name", fp, rawSig, pk},
		{"empty", fp, "", pk},
		{"not base64", fp, "hearth-test-1:!!!!", pk},
		{"short signature", fp, "hearth-test-1:" + base64.StdEncoding.EncodeToString(sigBytes[:63]), pk},
		{"long signature", fp, "hearth-test-1:" + base64.StdEncoding.EncodeToString(append(sigBytes, 0)), pk},
		{"zero public key", fp, good, PublicKey{Name: "hearth-test-1"}},
		{"short public key", fp, good, PublicKey{Name: "hearth-test-1", Key: pk.Key[:31]}},
	}
	if !pk.Verify(fp, good) {
		t.Fatal("the unmodified signature does not verify")
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.key.Verify(tc.fingerprint, tc.sig) {
				t.Fatalf("Verify(%q, %q) = true", tc.fingerprint, tc.sig)
			}
		})
	}
}

func TestGenerate(t *testing.T) {
	tests := []struct {
		name string
		err  string // a regexp the error must match, "" for success
	}{
		{"cache.example.org-1", ""},
		{"hearth", ""},
		{"ünïcode-1", ""},
		{"", `^key name is empty$`},
		{"a:b", `^key name "a:b" contains ':'$`},
		{"a b", `^key name "a b" contains ' '$`},
		{"a\nb", `^key name "a\\nb" contains '\\n'$`},
		{"a\x00", `^key name "a\\x00" contains '\\x00'$`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sk, err := Generate(tc.name)
			if tc.err != "" {
				if err == nil || !regexp.MustCompile(tc.err).MatchString(err.Error()) {
					t.Fatalf("Generate(%q) = %v, %v; want error matching %s", tc.name, sk, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			back, err := ParseSecretKey(sk.String())
			if err != nil || back.Name != tc.name || !back.Key.Equal(sk.Key) {
				t.Fatalf("ParseSecretKey(String()) = %v, %v", back, err)
			}
			pub, err := ParsePublicKey(sk.Public().String())
			if err != nil || pub.Name != tc.name || !pub.Key.Equal(sk.Public().Key) {
				t.Fatalf("ParsePublicKey(Public().String()) = %v, %v", pub, err)
			}
			if sig := sk.Sign("fp"); !pub.Verify("fp", sig) || pub.Verify("fq", sig) {
				t.Fatalf("signature %s does not verify for its fingerprint only", sig)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	sk, pk := nixKeys(t)
	_, skB64, _ := strings.Cut(sk.String(), ":")
	_, pkB64, _ := strings.Cut(pk.String(), ":")
	// A secret key whose second half is some other key's public key.
	other, err := Generate("x")
	if err != nil {
		t.Fatal(err)
	}
	mismatched := append(append([]byte(nil), sk.Key.Seed()...), other.Key[ed25519.SeedSize:]...)
	tests := []struct {
		name, in string
		secret   bool
		want     string // a regexp the error must match
	}{
		{"secret: empty", "", true, `^secret key has no ':' between name and key$`},
		{"secret: no name", ":" + skB64, true, `^secret key: key name is empty$`},
		{"secret: no colon", skB64, true, `^secret key has no ':'`},
		{"secret: not base64", "k:%%%", true, `^secret key "k": key is not base64`},
		{"secret: public key given", pk.String(), true, `^secret key "hearth-test-1": key is 32 bytes, want 64$`},
		{"secret: halves disagree", "k:" + base64.StdEncoding.EncodeToString(mismatched), true, `^secret key "k": its public half does not belong to its seed$`},
		{"secret: inner newline", "k:" + skB64[:10] + "\n" + skB64[10:], true, ``},
		{"public: empty", "  \n", false, `^public key has no ':' between name and key$`},
		{"public: secret key given", sk.String(), false, `^public key "hearth-test-1": key is 64 bytes, want 32$`},
		{"public: name with space", "my key:" + pkB64, false, `^public key: key name "my key" contains ' '$`},
		{"public: missing padding", "k:" + strings.TrimRight(pkB64, "="), false, `^public key "k": key is not base64`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.secret {
				_, err = ParseSecretKey(tc.in)
			} else {
				_, err = ParsePublicKey(tc.in)
			}
			if tc.want == "" {
				// Go's base64 skips newlines inside, as Nix's decoder does.
				if err != nil {
					t.Fatalf("error %v, want none", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error, want %s", tc.want)
			}
			if !regexp.MustCompile(tc.want).MatchString(err.Error()) {
				t.Fatalf("error %q does not match %q", err, tc.want)
			}
			if tc.secret && strings.Contains(err.Error(), skB64[:8]) {
				t.Fatalf("error %q reveals key material", err)
			}
		})
	}
}

func TestParseTrimsWhitespace(t *testing.T) {
	sk, pk := nixKeys(t)
	for _, s := range []string{sk.String() + "\n", "  " + sk.String() + "\r\n", "\t" + sk.String()} {
		got, err := ParseSecretKey(s)
		if err != nil || !got.Key.Equal(sk.Key) {
			t.Fatalf("ParseSecretKey(%q) = %v, %v", s, got, err)
		}
	}
	got, err := ParsePublicKey(pk.String() + "\n")
	if err != nil || !got.Key.Equal(pk.Key) {
		t.Fatalf("ParsePublicKey with newline = %v, %v", got, err)
	}
}

func TestLoadSecretKey(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	sk, pk := nixKeys(t)
	tests := []struct {
		name, path string
		want       string // a regexp the error must match, "" for success
	}{
		{"with final newline", write("nl.sk", sk.String()+"\n"), ""},
		{"missing", filepath.Join(dir, "absent.sk"), `^read the signing key: open .*/absent\.sk: no such file or directory$`},
		{"a directory", dir, `^read the signing key: read .*: is a directory$`},
		{"empty", write("empty.sk", "\n"), `^the signing key file .*/empty\.sk is empty$`},
		{"public key file", write("pk", pk.String()), `/pk is not a Nix secret key \(name:base64\): secret key "hearth-test-1": key is 32 bytes, want 64$`},
		{"garbage", write("junk", "-----BEGIN OPENSSH PRIVATE KEY-----\n"), `/junk is not a Nix secret key \(name:base64\): secret key has no ':'`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := LoadSecretKey(tc.path)
			if tc.want == "" {
				if err != nil || !got.Key.Equal(sk.Key) || got.Name != sk.Name {
					t.Fatalf("LoadSecretKey = %v, %v", got, err)
				}
				return
			}
			if err == nil || !regexp.MustCompile(tc.want).MatchString(err.Error()) {
				t.Fatalf("LoadSecretKey(%s) error %v, want match for %s", tc.path, err, tc.want)
			}
		})
	}
}
