package testenv

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
)

// Registry is a minimal OCI distribution registry on 127.0.0.1 that serves one image and demands
// HTTP basic auth, enough for containerd to pull it the way it pulls from a real registry.
type Registry struct {
	// Host is "127.0.0.1:PORT".
	Host               string
	Username, Password string
	// Image is the full reference of the one image, Repository/Tag its parts.
	Image, Repository, Tag string

	srv   *http.Server
	blobs map[string][]byte // digest → content
	mu    sync.Mutex
	// Authorized counts requests that carried the right credentials; Refused those that did not.
	Authorized, Refused int
}

// StartRegistry serves an image holding busybox (PATH=/bin) and bash, plus /etc/hearth-image with
// marker as its content.
func StartRegistry(username, password, marker string) (*Registry, error) {
	layer, diffID, err := imageLayer(marker)
	if err != nil {
		return nil, err
	}
	r := &Registry{Username: username, Password: password, Repository: "ci/tools", Tag: "1", blobs: map[string][]byte{}}
	layerDigest := r.add(layer)
	cfg, _ := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"config": map[string]any{"Env": []string{"PATH=/bin"}, "Cmd": []string{"/bin/sh"}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{diffID}},
	})
	cfgDigest := r.add(cfg)
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfgDigest, "size": len(cfg)},
		"layers":        []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layerDigest, "size": len(layer)}},
	})
	manifestDigest := r.add(manifest)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r.Host = ln.Addr().String()
	r.Image = r.Host + "/" + r.Repository + ":" + r.Tag
	mux := http.NewServeMux()
	mux.HandleFunc("/v2/", func(w http.ResponseWriter, req *http.Request) {
		u, p, ok := req.BasicAuth()
		r.mu.Lock()
		if !ok || u != r.Username || p != r.Password {
			r.Refused++
			r.mu.Unlock()
			w.Header().Set("WWW-Authenticate", `Basic realm="hearth-test"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
			return
		}
		r.Authorized++
		r.mu.Unlock()
		path := strings.TrimPrefix(req.URL.Path, "/v2/")
		var body []byte
		var mediaType, digest string
		switch {
		case path == "":
			w.WriteHeader(http.StatusOK)
			return
		case path == r.Repository+"/manifests/"+r.Tag || path == r.Repository+"/manifests/"+manifestDigest:
			body, mediaType, digest = manifest, "application/vnd.oci.image.manifest.v1+json", manifestDigest
		case strings.HasPrefix(path, r.Repository+"/blobs/"):
			digest = strings.TrimPrefix(path, r.Repository+"/blobs/")
			body = r.blobs[digest]
			mediaType = "application/octet-stream"
		}
		if body == nil {
			http.Error(w, `{"errors":[{"code":"NOT_FOUND"}]}`, http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", mediaType)
		w.Header().Set("Docker-Content-Digest", digest)
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		if req.Method != http.MethodHead {
			_, _ = w.Write(body)
		}
	})
	r.srv = &http.Server{Handler: mux}
	go func() { _ = r.srv.Serve(ln) }()
	return r, nil
}

// Counts returns how many requests were authorized and refused so far.
func (r *Registry) Counts() (authorized, refused int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.Authorized, r.Refused
}

// Close stops the registry.
func (r *Registry) Close() { _ = r.srv.Close() }

func (r *Registry) add(b []byte) string {
	sum := sha256.Sum256(b)
	d := "sha256:" + hex.EncodeToString(sum[:])
	r.blobs[d] = b
	return d
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
