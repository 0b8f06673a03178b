package testenv

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// S3 is a versitygw S3 server on 127.0.0.1 with a posix directory behind it, and a recording proxy
// in front of it that keeps the headers of every request, so tests can see what reached the server.
type S3 struct {
	// URL is the proxy's address (what clients use); Direct is versitygw's own.
	URL, Direct string
	// Dir is the posix root: DIR/BUCKET/KEY files, so DIR/BUCKET is a file:// binary cache.
	Dir                  string
	AccessKey, SecretKey string

	port  string
	cmd   *exec.Cmd
	log   string
	proxy *http.Server
	mu    sync.Mutex
	// headers holds the header names of every request the proxy passed on.
	headers []http.Header
	// failing is how many more requests that match failMatch the proxy answers itself with
	// failStatus, as a busy B2 does; failed counts those it answered.
	failing, failed int
	failStatus      int
	failMatch       func(*http.Request) bool
	// hold keeps requests that match waiting until holdRelease is closed.
	hold        func(*http.Request) bool
	holdArrived chan struct{}
	holdOnce    *sync.Once
	holdRelease chan struct{}
}

// Hold makes the proxy keep the requests that match waiting, as a slow server would, until
// release is called. arrived is closed when the first of them arrives.
func (s *S3) Hold(match func(*http.Request) bool) (arrived <-chan struct{}, release func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hold, s.holdArrived, s.holdOnce, s.holdRelease = match, make(chan struct{}), &sync.Once{}, make(chan struct{})
	var once sync.Once
	rel := s.holdRelease
	return s.holdArrived, func() { once.Do(func() { close(rel) }) }
}

// wait holds r while a Hold that matches it is in force.
func (s *S3) wait(r *http.Request) {
	s.mu.Lock()
	match, arrived, once, release := s.hold, s.holdArrived, s.holdOnce, s.holdRelease
	s.mu.Unlock()
	if match == nil || !match(r) {
		return
	}
	once.Do(func() { close(arrived) })
	<-release
}

// FailNext makes the proxy answer the next n requests that match with status and an S3 error
// body, without passing them on: B2 answers 500 and 503 by design when it is busy.
func (s *S3) FailNext(n, status int, match func(*http.Request) bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failing, s.failed, s.failStatus, s.failMatch = n, 0, status, match
}

// Failed is how many requests the proxy has failed since FailNext.
func (s *S3) Failed() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failed
}

// fail reports whether the proxy answers r itself with an error.
func (s *S3) fail(w http.ResponseWriter, r *http.Request) bool {
	s.mu.Lock()
	if s.failing == 0 || !s.failMatch(r) {
		s.mu.Unlock()
		return false
	}
	s.failing--
	s.failed++
	status := s.failStatus
	s.mu.Unlock()
	_, _ = io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	fmt.Fprintf(w, "<Error><Code>ServiceUnavailable</Code><Message>%s</Message></Error>", http.StatusText(status))
	return true
}

// VersityGW finds the versitygw binary: on PATH, or where `go install` puts it.
func VersityGW() (string, error) {
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	gopath, err := exec.Command("go", "env", "GOPATH").Output()
	if err == nil {
		p := filepath.Join(strings.TrimSpace(string(gopath)), "bin", "versitygw")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("versitygw is not installed: run ./scripts/setup.sh (go install github.com/versity/versitygw/cmd/versitygw@v1.8.0)")
}

// StartS3 starts versitygw with its data under dir.
func StartS3(dir string) (*S3, error) {
	s := &S3{Dir: filepath.Join(dir, "data"), AccessKey: "hearthtest", SecretKey: "hearthtestsecret", log: filepath.Join(dir, "versitygw.log")}
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s.port = ln.Addr().String()
	ln.Close()
	s.Direct = "http://" + s.port
	if err := s.Restart(); err != nil {
		return nil, err
	}
	target, _ := url.Parse(s.Direct)
	rp := httputil.NewSingleHostReverseProxy(target)
	pln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		s.Kill()
		return nil, err
	}
	s.URL = "http://" + pln.Addr().String()
	s.proxy = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.headers = append(s.headers, r.Header.Clone())
		s.mu.Unlock()
		if s.fail(w, r) {
			return
		}
		s.wait(r)
		rp.ServeHTTP(w, r)
	})}
	go func() { _ = s.proxy.Serve(pln) }()
	return s, nil
}

// Restart starts versitygw (again) on the same port and data.
func (s *S3) Restart() error {
	gw, err := VersityGW()
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(s.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(gw, "--access", s.AccessKey, "--secret", s.SecretKey, "--port", s.port, "posix", s.Dir)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start versitygw: %w", err)
	}
	s.cmd = cmd
	if err := waitListening("tcp", s.port, 20*time.Second); err != nil {
		s.Kill()
		b, _ := os.ReadFile(s.log)
		return fmt.Errorf("versitygw: %w: %s", err, b)
	}
	return nil
}

// Kill stops versitygw at once, as a crash would.
func (s *S3) Kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		_ = s.cmd.Wait()
		s.cmd = nil
	}
}

// Close stops the proxy and the server.
func (s *S3) Close() {
	if s.proxy != nil {
		_ = s.proxy.Close()
	}
	s.Kill()
}

// CreateBucket makes a bucket: with the posix backend a bucket is a directory of the root.
func (s *S3) CreateBucket(name string) (string, error) {
	p := filepath.Join(s.Dir, name)
	return p, os.MkdirAll(p, 0o755)
}

// Headers returns the headers of every request that reached the server so far.
func (s *S3) Headers() []http.Header {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]http.Header{}, s.headers...)
}

// WriteCredentials writes the access key id and secret to files under dir and returns their paths.
func (s *S3) WriteCredentials(dir string) (idFile, secretFile string, err error) {
	idFile, secretFile = filepath.Join(dir, "s3-access-key-id"), filepath.Join(dir, "s3-secret-access-key")
	if err := os.WriteFile(idFile, []byte(s.AccessKey+"\n"), 0o600); err != nil {
		return "", "", err
	}
	return idFile, secretFile, os.WriteFile(secretFile, []byte(s.SecretKey+"\n"), 0o600)
}
