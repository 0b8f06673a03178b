package testenv

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/hearth-ci/hearth/internal/testenv/gitlab"
)

// Registry is the distribution registry — the one GitLab's container registry is built on — on
// 127.0.0.1, with token authentication against the GitLab token issuer stand-in, as a GitLab
// registry is set up. It holds one image, pushed when it starts.
type Registry struct {
	// Host is "127.0.0.1:PORT".
	Host string
	// Image is the full reference of the one image, Repository/Tag its parts.
	Image, Repository, Tag string
	Issuer                 *gitlab.Issuer

	cmd *exec.Cmd
}

// RegistryBinary finds the registry that scripts/setup.sh builds.
func RegistryBinary() (string, error) {
	gopath, err := exec.Command("go", "env", "GOPATH").Output()
	if err != nil {
		return "", err
	}
	p := filepath.Join(strings.TrimSpace(string(gopath)), "hearth", "registry-3.1.2", "registry")
	if _, err := os.Stat(p); err != nil {
		return "", errors.New("the distribution registry is not built: run ./scripts/test.sh, or HEARTH_NEED_REGISTRY=1 source scripts/setup.sh")
	}
	return p, nil
}

// StartRegistry starts the issuer with logins, and the registry trusting it, under dir; then it
// pushes an image holding busybox (PATH=/bin) and bash, plus /etc/hearth-image with marker as its
// content, to ci/tools:1.
func StartRegistry(dir, marker string, logins ...gitlab.Login) (*Registry, error) {
	bin, err := RegistryBinary()
	if err != nil {
		return nil, err
	}
	var pw [12]byte
	_, _ = rand.Read(pw[:])
	pusher := gitlab.Login{Username: "registry-pusher", Password: hex.EncodeToString(pw[:]), Repos: map[string][]string{"ci/tools": {"pull", "push"}}}
	issuer, err := gitlab.Start(filepath.Join(dir, "issuer"), append(logins, pusher)...)
	if err != nil {
		return nil, err
	}
	r := &Registry{Repository: "ci/tools", Tag: "1", Issuer: issuer}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		issuer.Close()
		return nil, err
	}
	r.Host = ln.Addr().String()
	ln.Close()
	r.Image = r.Host + "/" + r.Repository + ":" + r.Tag
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: %s
http:
  addr: %s
  secret: %s
auth:
  token:
    realm: %s
    service: %s
    issuer: %s
    rootcertbundle: %s
    jwks: %s
    signingalgorithms: [RS256]
`, filepath.Join(dir, "data"), r.Host, hex.EncodeToString(pw[:]), issuer.Realm, gitlab.Service, gitlab.IssuerName, issuer.CertBundle, issuer.JWKS)
	cfgFile := filepath.Join(dir, "registry.yml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		issuer.Close()
		return nil, err
	}
	// Its tracing would try to reach a collector on localhost:4318 and log every failure.
	environ := append(os.Environ(), "OTEL_TRACES_EXPORTER=none")
	if r.cmd, err = start(filepath.Join(dir, "registry.log"), environ, bin, "serve", cfgFile); err != nil {
		issuer.Close()
		return nil, err
	}
	if err := waitListening("tcp", r.Host, 20*time.Second); err != nil {
		r.Close()
		return nil, err
	}
	if err := r.push(pusher, marker); err != nil {
		r.Close()
		return nil, fmt.Errorf("push the test image: %w", err)
	}
	return r, nil
}

// Close stops the registry and the issuer.
func (r *Registry) Close() {
	if r.cmd != nil {
		stop(r.cmd)
	}
	r.Issuer.Close()
}

// push uploads the image with the registry's HTTP API, with a token for login.
func (r *Registry) push(login gitlab.Login, marker string) error {
	token, err := r.token(login, "repository:"+r.Repository+":pull,push")
	if err != nil {
		return err
	}
	layer, diffID, err := imageLayer(marker)
	if err != nil {
		return err
	}
	config, _ := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"config": map[string]any{"Env": []string{"PATH=/bin"}, "Cmd": []string{"/bin/sh"}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{diffID}},
	})
	var descs []map[string]any
	for _, blob := range []struct {
		data      []byte
		mediaType string
	}{{config, "application/vnd.oci.image.config.v1+json"}, {layer, "application/vnd.oci.image.layer.v1.tar+gzip"}} {
		d, err := r.uploadBlob(token, blob.data)
		if err != nil {
			return err
		}
		descs = append(descs, map[string]any{"mediaType": blob.mediaType, "digest": d, "size": len(blob.data)})
	}
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": descs[0], "layers": descs[1:],
	})
	_, err = r.do(token, http.MethodPut, "http://"+r.Host+"/v2/"+r.Repository+"/manifests/"+r.Tag, manifest,
		"application/vnd.oci.image.manifest.v1+json", http.StatusCreated)
	return err
}

// token asks the issuer for a token for scope, as a client does after the registry's challenge.
func (r *Registry) token(login gitlab.Login, scope string) (string, error) {
	u := r.Issuer.Realm + "?" + url.Values{"service": {gitlab.Service}, "scope": {scope}}.Encode()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		return "", err
	}
	req.SetBasicAuth(login.Username, login.Password)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var out struct {
		Token string `json:"token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != http.StatusOK || out.Token == "" {
		return "", fmt.Errorf("token for %s: %s", scope, resp.Status)
	}
	return out.Token, nil
}

// uploadBlob uploads data in one piece (POST, then PUT with its digest) and returns its digest.
func (r *Registry) uploadBlob(token string, data []byte) (string, error) {
	sum := sha256.Sum256(data)
	digest := "sha256:" + hex.EncodeToString(sum[:])
	resp, err := r.do(token, http.MethodPost, "http://"+r.Host+"/v2/"+r.Repository+"/blobs/uploads/", nil, "", http.StatusAccepted)
	if err != nil {
		return "", err
	}
	loc, err := resp.Request.URL.Parse(resp.Header.Get("Location"))
	if err != nil {
		return "", err
	}
	q := loc.Query()
	q.Set("digest", digest)
	loc.RawQuery = q.Encode()
	_, err = r.do(token, http.MethodPut, loc.String(), data, "application/octet-stream", http.StatusCreated)
	return digest, err
}

func (r *Registry) do(token, method, u string, body []byte, contentType string, want int) (*http.Response, error) {
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != want {
		return nil, fmt.Errorf("%s %s: %s: %s", method, req.URL.Path, resp.Status, bytes.TrimSpace(msg))
	}
	return resp, nil
}

// imageLayer builds the gzipped layer and returns it with its diff id (the digest of the tar).
func imageLayer(marker string) ([]byte, string, error) {
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	dir := func(name string) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755})
	}
	file := func(name string, mode int64, content []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(content))}); err != nil {
			return err
		}
		_, err := tw.Write(content)
		return err
	}
	for _, d := range []string{"bin/", "etc/", "tmp/", "root/"} {
		if err := dir(d); err != nil {
			return nil, "", err
		}
	}
	busybox, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return nil, "", err
	}
	bash, err := os.ReadFile("/bin/bash-static")
	if err != nil {
		return nil, "", err
	}
	if err := file("bin/busybox", 0o755, busybox); err != nil {
		return nil, "", err
	}
	if err := file("bin/bash", 0o755, bash); err != nil {
		return nil, "", err
	}
	applets, err := exec.Command("/bin/busybox", "--list").Output()
	if err != nil {
		return nil, "", err
	}
	for _, a := range strings.Fields(string(applets)) {
		if a == "busybox" || a == "bash" {
			continue
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777}); err != nil {
			return nil, "", err
		}
	}
	if err := file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\n")); err != nil {
		return nil, "", err
	}
	if err := file("etc/hearth-image", 0o644, []byte(marker+"\n")); err != nil {
		return nil, "", err
	}
	if err := tw.Close(); err != nil {
		return nil, "", err
	}
	sum := sha256.Sum256(raw.Bytes())
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	if _, err := zw.Write(raw.Bytes()); err != nil {
		return nil, "", err
	}
	if err := zw.Close(); err != nil {
		return nil, "", err
	}
	return gz.Bytes(), "sha256:" + hex.EncodeToString(sum[:]), nil
}
