package main

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/hearth-ci/hearth/internal/testenv"
	"github.com/hearth-ci/hearth/nix/signing"
)

// benchThrottle measures a push to S3 while the server answers one upload in five with 503
// SlowDown, as B2 does when busy, against the same push to a server that never throttles:
// what the retries' backoff costs.
func benchThrottle(parts *testenv.Parts, runs int) error {
	s3, err := testenv.StartS3(filepath.Join(parts.Dir, "s3-throttle"))
	if err != nil {
		return err
	}
	defer s3.Close()
	key, err := signing.Generate("hearth-bench-throttle-1")
	if err != nil {
		return err
	}
	keyFile := filepath.Join(parts.Dir, "throttle.secret")
	if err := os.WriteFile(keyFile, []byte(key.String()), 0o600); err != nil {
		return err
	}
	id, secret, err := s3.WriteCredentials(parts.Dir)
	if err != nil {
		return err
	}
	target, _ := url.Parse(s3.Direct)
	proxy := httputil.NewSingleHostReverseProxy(target)
	var puts, refused atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && puts.Add(1)%5 == 0 {
			refused.Add(1)
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>`)
			return
		}
		proxy.ServeHTTP(w, r)
	})}
	go srv.Serve(ln)
	defer srv.Close()
	throttling := "http://" + ln.Addr().String()

	root, err := smallClosure(parts, 40)
	if err != nil {
		return err
	}
	buckets := 0
	config := func(endpoint string) (string, error) {
		buckets++
		name := fmt.Sprintf("throttle-%d", buckets)
		if _, err := s3.CreateBucket(name); err != nil {
			return "", err
		}
		return parts.WriteConfig("", `backend = "s3"`, fmt.Sprintf("\n[cache.s3]\nbucket = %q\nendpoint = %q\naccess_key_id_file = %q\nsecret_access_key_file = %q\nsigning_key_file = %q\n",
			name, endpoint, id, secret, keyFile))
	}
	var plain, throttled []time.Duration
	var refusals []int64
	for i := 0; i < runs; i++ {
		for _, endpoint := range []string{s3.Direct, throttling} {
			cfg, err := config(endpoint)
			if err != nil {
				return err
			}
			before := refused.Load()
			d, out, err := timed(exec.Command(parts.Hearth, "--config", cfg, "cache", "push", root))
			if err != nil {
				return fmt.Errorf("push: %v\n%s", err, out)
			}
			if endpoint == s3.Direct {
				plain = append(plain, d)
			} else {
				throttled = append(throttled, d)
				refusals = append(refusals, refused.Load()-before)
			}
		}
	}
	p, t := median(plain), median(throttled)
	fmt.Println()
	fmt.Printf("Push a closure of 41 small paths to S3, with one upload in five answered 503 SlowDown, against\nthe same push unthrottled (%d runs, interleaved):\n", runs)
	fmt.Printf("  floor: unthrottled                 %s\n", ms(p))
	fmt.Printf("  throttled                          %s   (503s answered per push: %v)\n", ms(t), refusals)
	fmt.Printf("  ratio                              %.2f\n", float64(t)/float64(p))
	return nil
}
