// Package gitlab is the part of GitLab the tests need that gitlab-runner does not bring: the token
// issuer of its container registry (GitLab's /jwt/auth), which the real registry the tests run
// trusts, as a GitLab registry trusts GitLab. A job pulls with the credentials its payload carries
// (gitlab-ci-token and the job's token); the issuer grants what that login may have and leaves out
// the rest, as GitLab does. It follows GitLab's JwtController and its registry authentication
// service: GET only, HTTP Basic, 401 with GitLab's body for bad credentials, tokens signed RS256
// with GitLab's libtrust-style kid and the access claims the registry checks.
package gitlab

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base32"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// Service and IssuerName are the registry's auth.token service and issuer, as GitLab names them.
const (
	Service    = "container_registry"
	IssuerName = "gitlab-issuer"
)

// Login is one set of credentials and the repositories it may use: repository (or "group/*")
// to actions ("pull", "push").
type Login struct {
	Username, Password string
	Repos              map[string][]string
}

// Issuer is a running token issuer.
type Issuer struct {
	// Realm is the URL the registry sends clients to for tokens.
	Realm string
	// CertBundle and JWKS are the files the registry's auth.token rootcertbundle and jwks name:
	// the issuer's certificate, and its key under the kid GitLab's tokens carry (the registry
	// trusts a bundle's key only under its RFC 7638 thumbprint).
	CertBundle, JWKS string

	logins []Login
	key    *rsa.PrivateKey
	header string
	srv    *http.Server
	mu     sync.Mutex
	// issued counts tokens given out; refused requests whose credentials were wrong.
	issued, refused int
}

// Start serves the issuer on 127.0.0.1, keeping its key and the registry's trust files in dir.
func Start(dir string, logins ...Login) (*Issuer, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	is := &Issuer{logins: logins, key: key, CertBundle: filepath.Join(dir, "token-signing.crt"), JWKS: filepath.Join(dir, "jwks.json")}
	if err := is.writeTrust(); err != nil {
		return nil, err
	}
	hdr, _ := json.Marshal(map[string]string{"alg": "RS256", "typ": "JWT", "kid": libtrustKeyID(&key.PublicKey)})
	is.header = base64.RawURLEncoding.EncodeToString(hdr)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	is.Realm = "http://" + ln.Addr().String() + "/jwt/auth"
	mux := http.NewServeMux()
	mux.HandleFunc("/jwt/auth", is.auth)
	is.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = is.srv.Serve(ln) }()
	return is, nil
}

// Close stops the issuer.
func (is *Issuer) Close() { _ = is.srv.Close() }

// Counts returns how many tokens were issued and how many requests were refused for their
// credentials.
func (is *Issuer) Counts() (issued, refused int) {
	is.mu.Lock()
	defer is.mu.Unlock()
	return is.issued, is.refused
}

type access struct {
	Type    string   `json:"type"`
	Name    string   `json:"name"`
	Actions []string `json:"actions"`
}

func (is *Issuer) auth(w http.ResponseWriter, r *http.Request) {
	// GitLab routes only GET here; containerd's OAuth POST gets 404 and it falls back to GET.
	if r.Method != http.MethodGet {
		http.NotFound(w, r)
		return
	}
	q := r.URL.Query()
	if q.Get("service") != Service {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	var login *Login
	if user, pass, ok := r.BasicAuth(); ok {
		login = is.check(user, pass)
		if login == nil {
			is.count(&is.refused)
			writeJSON(w, http.StatusUnauthorized, map[string]any{"errors": []map[string]string{{"code": "UNAUTHORIZED",
				"message": "HTTP Basic: Access denied. If a password was provided for Git authentication, the password was incorrect or you're required to use a token instead of a password. If a token was provided, it was either incorrect, expired, or improperly scoped."}}})
			return
		}
	}
	// Without credentials GitLab issues an anonymous token, which grants nothing on a private
	// project: the registry then refuses the pull.
	granted := []access{}
	for _, s := range q["scope"] {
		for _, scope := range strings.Fields(s) {
			if a, ok := grant(login, scope); ok {
				granted = append(granted, a)
			}
		}
	}
	tok, err := is.sign(login, granted)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	is.count(&is.issued)
	writeJSON(w, http.StatusOK, map[string]string{"token": tok})
}

func (is *Issuer) count(n *int) {
	is.mu.Lock()
	defer is.mu.Unlock()
	*n++
}

func (is *Issuer) check(user, pass string) *Login {
	for i, l := range is.logins {
		if l.Username == user && subtle.ConstantTimeCompare([]byte(l.Password), []byte(pass)) == 1 {
			return &is.logins[i]
		}
	}
	return nil
}

// grant returns the actions of scope ("repository:NAME:pull,push") that login may have; a
// scope it may have nothing of is left out of the token, as GitLab does.
func grant(login *Login, scope string) (access, bool) {
	parts := strings.SplitN(scope, ":", 3)
	if login == nil || len(parts) != 3 || parts[0] != "repository" {
		return access{}, false
	}
	var allowed []string
	for pattern, actions := range login.Repos {
		if prefix, ok := strings.CutSuffix(pattern, "/*"); ok && strings.HasPrefix(parts[1], prefix+"/") || pattern == parts[1] {
			allowed = append(allowed, actions...)
		}
	}
	var got []string
	for _, a := range strings.Split(parts[2], ",") {
		if slices.Contains(allowed, a) && !slices.Contains(got, a) {
			got = append(got, a)
		}
	}
	if len(got) == 0 {
		return access{}, false
	}
	return access{Type: "repository", Name: parts[1], Actions: got}, true
}

// sign makes GitLab's token: iss, sub, aud, a five-minute lifetime with nbf 5 s before now, jti,
// and the access granted.
func (is *Issuer) sign(login *Login, granted []access) (string, error) {
	sub := ""
	if login != nil {
		sub = login.Username
	}
	var jti [16]byte
	_, _ = rand.Read(jti[:])
	now := time.Now()
	claims, err := json.Marshal(map[string]any{
		"iss": IssuerName, "sub": sub, "aud": Service, "iat": now.Unix(), "nbf": now.Add(-5 * time.Second).Unix(),
		"exp": now.Add(5 * time.Minute).Unix(), "jti": fmt.Sprintf("%x", jti), "access": granted,
	})
	if err != nil {
		return "", err
	}
	input := is.header + "." + base64.RawURLEncoding.EncodeToString(claims)
	sum := sha256.Sum256([]byte(input))
	sig, err := rsa.SignPKCS1v15(rand.Reader, is.key, crypto.SHA256, sum[:])
	if err != nil {
		return "", err
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

// writeTrust writes the issuer's self-signed certificate and its key as a JWKS under GitLab's kid.
func (is *Issuer) writeTrust() error {
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: IssuerName},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().AddDate(1, 0, 0),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &is.key.PublicKey, is.key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(is.CertBundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	pub := &is.key.PublicKey
	jwks, _ := json.Marshal(map[string]any{"keys": []map[string]string{{
		"kty": "RSA", "use": "sig", "alg": "RS256", "kid": libtrustKeyID(pub),
		"n": base64.RawURLEncoding.EncodeToString(pub.N.Bytes()),
		"e": base64.RawURLEncoding.EncodeToString(big.NewInt(int64(pub.E)).Bytes()),
	}}})
	return os.WriteFile(is.JWKS, jwks, 0o644)
}

// libtrustKeyID is the kid GitLab puts in its tokens: the SHA-256 of the DER public key, its first
// 30 bytes in base32, a colon every four characters.
func libtrustKeyID(pub *rsa.PublicKey) string {
	der, _ := x509.MarshalPKIXPublicKey(pub)
	sum := sha256.Sum256(der)
	s := base32.StdEncoding.EncodeToString(sum[:30])
	var groups []string
	for i := 0; i < len(s); i += 4 {
		groups = append(groups, s[i:i+4])
	}
	return strings.Join(groups, ":")
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
