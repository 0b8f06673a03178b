package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/hearth-ci/hearth/internal/testenv"
	"github.com/hearth-ci/hearth/nix/signing"
)

// benchCache runs the cache benchmarks: push throughput against nix copy, re-push of a cached
// closure, peak memory on one large path, and substitution against building.
func benchCache(parts *testenv.Parts, runs int) error {
	s3, err := testenv.StartS3(filepath.Join(parts.Dir, "s3"))
	if err != nil {
		return err
	}
	defer s3.Close()
	key, err := signing.Generate("hearth-bench-1")
	if err != nil {
		return err
	}
	keyFile := filepath.Join(parts.Dir, "bench.secret")
	if err := os.WriteFile(keyFile, []byte(key.String()), 0o600); err != nil {
		return err
	}
	id, secret, err := s3.WriteCredentials(parts.Dir)
	if err != nil {
		return err
	}
	buckets := 0
	s3Config := func() (string, error) {
		buckets++
		name := fmt.Sprintf("bench-%d", buckets)
		if _, err := s3.CreateBucket(name); err != nil {
			return "", err
		}
		return parts.WriteConfig("", `backend = "s3"`, fmt.Sprintf("\n[cache.s3]\nbucket = %q\nendpoint = %q\naccess_key_id_file = %q\nsecret_access_key_file = %q\nsigning_key_file = %q\n",
			name, s3.Direct, id, secret, keyFile))
	}

	// 1. ~400 MB in 8 paths of real files (binaries and libraries compress as real outputs do).
	paths, total, err := realPaths(parts, 8, 50<<20)
	if err != nil {
		return err
	}
	fmt.Printf("\nPush %d paths, %s of NAR, to the S3 server with zstd, against `nix copy --to file://DIR?compression=zstd`\nof the same paths (%d runs, interleaved):\n", len(paths), mib(total), runs)
	var ours, theirs []time.Duration
	for i := 0; i < runs; i++ {
		cfg, err := s3Config()
		if err != nil {
			return err
		}
		d, _, err := timed(exec.Command(parts.Hearth, append([]string{"--config", cfg, "cache", "push", "--no-closure"}, paths...)...))
		if err != nil {
			return err
		}
		ours = append(ours, d)
		dir := filepath.Join(parts.Dir, fmt.Sprintf("nixcopy-%d", i))
		nixCopy := exec.Command("nix", append([]string{"--extra-experimental-features", "nix-command", "copy", "--to", "file://" + dir + "?compression=zstd"}, paths...)...)
		nixCopy.Env = parts.NixEnv()
		d, _, err = timed(nixCopy)
		if err != nil {
			return err
		}
		theirs = append(theirs, d)
		os.RemoveAll(dir)
	}
	o, n := median(ours), median(theirs)
	fmt.Printf("  floor: nix copy to file:// (zstd)   %s  (%s/s)\n", secs(n), mib(int64(float64(total)/n.Seconds())))
	fmt.Printf("  hearth cache push to S3 (zstd)     %s  (%s/s)\n", secs(o), mib(int64(float64(total)/o.Seconds())))
	fmt.Printf("  throughput ratio                   %.2f   (target >= 1.0, aim 1.5)\n", n.Seconds()/o.Seconds())

	// 2. Re-push of a cached closure of 1,000 small paths.
	root, err := smallClosure(parts, 1000)
	if err != nil {
		return err
	}
	cfg, err := s3Config()
	if err != nil {
		return err
	}
	if _, out, err := timed(exec.Command(parts.Hearth, "--config", cfg, "cache", "push", root)); err != nil {
		return fmt.Errorf("first push of the small closure: %v\n%s", err, out)
	}
	var repush []time.Duration
	for i := 0; i < runs; i++ {
		d, out, err := timed(exec.Command(parts.Hearth, "--config", cfg, "cache", "push", root))
		if err != nil {
			return err
		}
		if !strings.Contains(out, "pushed 0 paths; 1001 already in the cache") {
			return fmt.Errorf("the re-push uploaded something:\n%s", out)
		}
		repush = append(repush, d)
	}
	fmt.Printf("\nRe-push of an already-cached closure of 1,001 small paths to the S3 server (%d runs):\n", runs)
	fmt.Printf("  hearth cache push                  %s   (target <= 2 s)\n", secs(median(repush)))

	// 3. Peak memory pushing one 1 GB path.
	big, err := parts.AddRandom("bench-1g", 1<<30)
	if err != nil {
		return err
	}
	cfg, err = s3Config()
	if err != nil {
		return err
	}
	rssCmd := exec.Command("/usr/bin/time", "-f", "maxrss-kb %M", parts.Hearth, "--config", cfg, "cache", "push", "--no-closure", big)
	d, out, err := timed(rssCmd)
	if err != nil {
		return err
	}
	m := regexp.MustCompile(`maxrss-kb (\d+)`).FindStringSubmatch(out)
	if m == nil {
		return fmt.Errorf("no peak RSS in:\n%s", out)
	}
	kb, _ := strconv.Atoi(m[1])
	fmt.Printf("\nPeak RSS of hearth cache push of one 1 GiB path to the S3 server (multipart, zstd):\n")
	fmt.Printf("  peak RSS                           %d MiB in %s   (target <= 200 MB)\n", kb/1024, secs(d))

	// 4. Substituting a closure into an empty store, against building it.
	var builds, substs []time.Duration
	for i := 0; i < runs; i++ {
		nonce := fmt.Sprintf("subst-%d-%d", time.Now().UnixNano(), i)
		expr := filepath.Join(parts.Dir, nonce+".nix")
		if err := os.WriteFile(expr, []byte(workExpr(parts.Tools, nonce)), 0o644); err != nil {
			return err
		}
		build := exec.Command("nix-build", "--no-out-link", expr)
		build.Env = parts.NixEnv()
		d, out, err := timed(build)
		if err != nil {
			return err
		}
		top := strings.TrimSpace(out[strings.LastIndex(strings.TrimSpace(out), "\n")+1:])
		fileDir := filepath.Join(parts.Dir, "subst-cache-"+nonce)
		fileCfg, err := parts.WriteConfig("", "", fmt.Sprintf("\n[cache.file]\ndir = %q\nsigning_key_file = %q\n", fileDir, keyFile))
		if err != nil {
			return err
		}
		if _, out, err := timed(exec.Command(parts.Hearth, "--config", fileCfg, "cache", "push", top)); err != nil {
			return fmt.Errorf("push: %v\n%s", err, out)
		}
		start := time.Now()
		if _, err := parts.Substitute("file://"+fileDir, key.Public().String(), top); err != nil {
			return err
		}
		builds, substs = append(builds, d), append(substs, time.Since(start))
	}
	b, s := median(builds), median(substs)
	fmt.Printf("\nAn empty store substituting a closure of 4 derivations from the cache, against building it (%d runs):\n", runs)
	fmt.Printf("  build                              %s\n", secs(b))
	fmt.Printf("  substitute (file:// cache)         %s\n", secs(s))
	fmt.Printf("  ratio                              %.3f   (target <= 0.1)\n", s.Seconds()/b.Seconds())
	_ = context.Background
	return nil
}

func timed(cmd *exec.Cmd) (time.Duration, string, error) {
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	d := time.Since(start)
	if err != nil {
		return d, out.String(), fmt.Errorf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out.String())
	}
	return d, out.String(), nil
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

func mib(n int64) string { return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20)) }

// realPaths adds n store paths of about size bytes each, made of real files from /usr, and returns
// them with their total NAR size.
func realPaths(parts *testenv.Parts, n int, size int64) ([]string, int64, error) {
	var files []string
	for _, root := range []string{"/usr/lib", "/usr/bin", "/usr/share", "/usr/local/go"} {
		_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				files = append(files, p)
			}
			return nil
		})
	}
	var paths []string
	var total int64
	next := 0
	for i := 0; i < n; i++ {
		dir := filepath.Join(parts.Dir, "real", fmt.Sprintf("bench-real-%d", i))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, 0, err
		}
		var got int64
		for got < size && next < len(files) {
			src := files[next]
			next++
			fi, err := os.Stat(src)
			if err != nil || fi.Size() == 0 || fi.Size() > size-got {
				continue
			}
			if err := copyInto(src, filepath.Join(dir, fmt.Sprintf("%05d-%s", next, filepath.Base(src)))); err != nil {
				continue
			}
			got += fi.Size()
		}
		if got < size/2 {
			return nil, 0, fmt.Errorf("not enough files under /usr to make %d paths of %d bytes", n, size)
		}
		p, err := parts.Nix("nix-store", "--add", dir)
		if err != nil {
			return nil, 0, err
		}
		os.RemoveAll(dir)
		paths = append(paths, p)
		total += got
	}
	return paths, total, nil
}

func copyInto(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// smallClosure adds n tiny paths and builds a root that references them all; it returns the root.
func smallClosure(parts *testenv.Parts, n int) (string, error) {
	var refs []string
	stamp := time.Now().UnixNano()
	for i := 0; i < n; i++ {
		dir := filepath.Join(parts.Dir, "small", fmt.Sprintf("small-%d-%d", stamp, i))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(dir, "f"), []byte(fmt.Sprintf("small path %d of %d\n", i, stamp)), 0o644); err != nil {
			return "", err
		}
	}
	out, err := parts.Nix(append([]string{"nix-store", "--add"}, globAll(filepath.Join(parts.Dir, "small", "*"))...)...)
	if err != nil {
		return "", err
	}
	refs = strings.Fields(out)
	os.RemoveAll(filepath.Join(parts.Dir, "small"))
	var b strings.Builder
	fmt.Fprintf(&b, "let tools = builtins.storePath %q; in derivation { name = \"bench-small-root-%d\"; system = \"x86_64-linux\";\n", parts.Tools, stamp)
	b.WriteString("  builder = \"${tools}/bin/bash\"; PATH = \"${tools}/bin\"; args = [ \"-c\" \"echo $deps > $out\" ];\n  deps = [\n")
	for _, r := range refs {
		fmt.Fprintf(&b, "    (builtins.storePath %q)\n", r)
	}
	b.WriteString("  ]; }\n")
	expr := filepath.Join(parts.Dir, "small-root.nix")
	if err := os.WriteFile(expr, []byte(b.String()), 0o644); err != nil {
		return "", err
	}
	return parts.Nix("nix-build", "--no-out-link", expr)
}

func globAll(pattern string) []string {
	m, _ := filepath.Glob(pattern)
	return m
}

// workExpr is a closure of 4 derivations that do real work (compressing data), each using the one
// before.
func workExpr(tools, nonce string) string {
	return fmt.Sprintf(`let tools = builtins.storePath %q;
  step = n: prev: derivation { name = "bench-work-%s-${toString n}"; system = "x86_64-linux";
    builder = "${tools}/bin/bash"; PATH = "${tools}/bin"; inherit prev;
    args = [ "-c" "mkdir $out; echo $prev > $out/prev; head -c 60000000 /dev/urandom | base64 | gzip -6 > $out/data.gz" ]; };
  a = step 1 ""; b = step 2 a; c = step 3 b; d = step 4 c;
in d
`, tools, nonce)
}
