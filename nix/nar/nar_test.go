package nar

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
)

const nixStore = "/usr/bin/nix-store"

// nixDump is the reference: the whole point of the package is to agree with
// Nix byte for byte, so the tests refuse to pass without it.
func nixDump(t *testing.T, path string) []byte {
	t.Helper()
	if _, err := os.Stat(nixStore); err != nil {
		t.Fatalf("%s is required as the reference implementation (apt-get install nix-bin): %v", nixStore, err)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(nixStore, "--dump", path)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nix-store --dump %s: %v\n%s", path, err, stderr.Bytes())
	}
	return out
}

func goDump(t *testing.T, path string) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Dump(&buf, path); err != nil {
		t.Fatalf("Dump(%s): %v", path, err)
	}
	return buf.Bytes()
}

func assertSameAsNix(t *testing.T, path string) {
	t.Helper()
	want := nixDump(t, path)
	got := goDump(t, path)
	if bytes.Equal(got, want) {
		return
	}
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	lo := max(i-32, 0)
	t.Fatalf("NAR differs from nix-store --dump at byte %d (got %d bytes, want %d)\ngot:  %q\nwant: %q",
		i, len(got), len(want), got[lo:min(i+32, len(got))], want[lo:min(i+32, len(want))])
}

func writeFile(t *testing.T, path string, data []byte, perm fs.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, perm); err != nil {
		t.Fatal(err)
	}
	// WriteFile's perm is filtered by the umask; the executable bit is
	// what is under test, so set it exactly.
	if err := os.Chmod(path, perm); err != nil {
		t.Fatal(err)
	}
}

func mkdir(t *testing.T, path string) {
	t.Helper()
	if err := os.MkdirAll(path, 0o755); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, path string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
}

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestDumpMatchesNix(t *testing.T) {
	tests := []struct {
		name string
		// build populates dir and returns the path to dump.
		build func(t *testing.T, dir string) string
	}{
		{"top-level regular file", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "f")
			writeFile(t, p, []byte("hello, world\n"), 0o644)
			return p
		}},
		{"top-level executable file", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "x")
			writeFile(t, p, []byte("#!/bin/sh\necho hi\n"), 0o755)
			return p
		}},
		{"top-level owner-only execute bit", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "x")
			writeFile(t, p, []byte("owner x"), 0o744)
			return p
		}},
		{"top-level group/other execute bits only", func(t *testing.T, dir string) string {
			// Nix looks at S_IXUSR alone, so this is not executable.
			p := filepath.Join(dir, "x")
			writeFile(t, p, []byte("group x"), 0o655)
			return p
		}},
		{"top-level empty file", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "empty")
			writeFile(t, p, nil, 0o644)
			return p
		}},
		{"top-level symlink to file", func(t *testing.T, dir string) string {
			writeFile(t, filepath.Join(dir, "f"), []byte("target"), 0o644)
			p := filepath.Join(dir, "l")
			symlink(t, "f", p)
			return p
		}},
		{"top-level symlink to directory is not followed", func(t *testing.T, dir string) string {
			writeFile(t, filepath.Join(dir, "d", "f"), []byte("inside"), 0o644)
			p := filepath.Join(dir, "l")
			symlink(t, "d", p)
			return p
		}},
		{"top-level dangling symlink", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "l")
			symlink(t, "/nonexistent/target", p)
			return p
		}},
		{"top-level symlink to directory with trailing slash", func(t *testing.T, dir string) string {
			// The kernel resolves "l/" through the link, and so does Nix.
			writeFile(t, filepath.Join(dir, "d", "f"), []byte("inside"), 0o644)
			symlink(t, "d", filepath.Join(dir, "l"))
			return filepath.Join(dir, "l") + "/"
		}},
		{"empty directory", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "e")
			mkdir(t, p)
			return p
		}},
		{"mixed tree", func(t *testing.T, dir string) string {
			root := filepath.Join(dir, "root")
			writeFile(t, filepath.Join(root, "file"), []byte("regular contents\n"), 0o644)
			writeFile(t, filepath.Join(root, "bin", "tool"), []byte("\x7fELF not really"), 0o755)
			writeFile(t, filepath.Join(root, "empty"), nil, 0o644)
			mkdir(t, filepath.Join(root, "emptydir"))
			writeFile(t, filepath.Join(root, "a", "b", "c", "d", "deep"), []byte("deep"), 0o600)
			mkdir(t, filepath.Join(root, "a", "b", "sibling-empty"))
			symlink(t, "file", filepath.Join(root, "link-to-file"))
			symlink(t, "does/not/exist", filepath.Join(root, "dangling"))
			symlink(t, "a/b", filepath.Join(root, "link-to-dir"))
			symlink(t, "/etc", filepath.Join(root, "absolute-link-to-dir"))
			symlink(t, "../..", filepath.Join(root, "a", "b", "up"))
			return root
		}},
		{"bytewise name order", func(t *testing.T, dir string) string {
			root := filepath.Join(dir, "root")
			for i, name := range []string{
				"B", "a", "_x", "Z", "é", "e", "f", "a.b", "a-b", "a0", "a_b", "A",
				"~", " space", "1", "10", "9", "ß", "日本", "\x01ctl", "\xffnot-utf8", ".hidden", "..dots",
			} {
				writeFile(t, filepath.Join(root, name), []byte(fmt.Sprint(i)), 0o644)
			}
			return root
		}},
		{"padding boundaries", func(t *testing.T, dir string) string {
			root := filepath.Join(dir, "root")
			for n := 0; n <= 17; n++ {
				// File sizes, name lengths and symlink target lengths
				// each straddle the 8-byte alignment.
				writeFile(t, filepath.Join(root, "size", fmt.Sprintf("f%02d", n)), randomBytes(n, uint64(n)), 0o644)
				if n > 0 {
					writeFile(t, filepath.Join(root, "name", strings.Repeat("n", n)), nil, 0o644)
					symlink(t, strings.Repeat("t", n), filepath.Join(root, "target", fmt.Sprintf("l%02d", n)))
				}
			}
			return root
		}},
		{"large files across buffer boundaries", func(t *testing.T, dir string) string {
			root := filepath.Join(dir, "root")
			writeFile(t, filepath.Join(root, "3MiB+13"), randomBytes(3<<20+13, 1), 0o644)
			// Exact multiples of the copy buffer take the path where EOF
			// must be confirmed by an extra read.
			writeFile(t, filepath.Join(root, "buf"), randomBytes(copyBufSize, 2), 0o755)
			writeFile(t, filepath.Join(root, "2buf"), randomBytes(2*copyBufSize, 3), 0o644)
			writeFile(t, filepath.Join(root, "buf-1"), randomBytes(copyBufSize-1, 4), 0o644)
			writeFile(t, filepath.Join(root, "buf+1"), randomBytes(copyBufSize+1, 5), 0o644)
			writeFile(t, filepath.Join(root, "writebuf+7"), randomBytes(writeBufSize+7, 6), 0o644)
			return root
		}},
		{"top-level large file", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "big")
			writeFile(t, p, randomBytes(3<<20, 7), 0o644)
			return p
		}},
		{"deep nesting", func(t *testing.T, dir string) string {
			root := filepath.Join(dir, "root")
			p := root
			for i := range 40 {
				p = filepath.Join(p, fmt.Sprintf("d%d", i))
				writeFile(t, filepath.Join(p, "f"), []byte(p), 0o644)
			}
			return root
		}},
		{"wide directory", func(t *testing.T, dir string) string {
			root := filepath.Join(dir, "root")
			for i := range 1000 {
				writeFile(t, filepath.Join(root, fmt.Sprintf("file-%d", i*7919%1000)), []byte(fmt.Sprint(i)), 0o644)
			}
			return root
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := tt.build(t, t.TempDir())
			assertSameAsNix(t, path)
		})
	}
}

func TestDumpUnsupportedTypes(t *testing.T) {
	tests := []struct {
		name string
		// make creates a special file at path, kept alive until the test ends.
		make func(t *testing.T, path string)
	}{
		{"fifo", func(t *testing.T, path string) {
			if err := syscall.Mkfifo(path, 0o644); err != nil {
				t.Fatal(err)
			}
		}},
		{"unix socket", func(t *testing.T, path string) {
			l, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
		}},
	}
	for _, tt := range tests {
		for _, nested := range []bool{true, false} {
			name := tt.name + " top-level"
			if nested {
				name = tt.name + " in tree"
			}
			t.Run(name, func(t *testing.T) {
				dir := t.TempDir()
				root := filepath.Join(dir, "root")
				writeFile(t, filepath.Join(root, "a-before"), []byte("ok"), 0o644)
				writeFile(t, filepath.Join(root, "z-after"), []byte("ok"), 0o644)
				special := filepath.Join(root, "sub", "special")
				mkdir(t, filepath.Dir(special))
				tt.make(t, special)
				path := root
				if !nested {
					path = special
				}

				err := Dump(io.Discard, path)
				if err == nil {
					t.Fatalf("Dump(%s) succeeded; want an error for the %s", path, tt.name)
				}
				want := filepath.Join(root, "sub") + "/special"
				if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "unsupported file type") {
					t.Fatalf("error %q does not name %s as unsupported", err, want)
				}
			})
		}
	}
}

func TestDumpMissingPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing")
	err := Dump(io.Discard, path)
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), path) {
		t.Fatalf("Dump(missing) = %v; want a not-exist error naming %s", err, path)
	}
}

// The size-change check cannot be triggered reliably by racing a writer, so
// it is exercised by handing copyContents a stat size that disagrees with
// the file, which is exactly what a concurrent truncate or append produces.
func TestCopyContentsSizeChanged(t *testing.T) {
	tests := []struct {
		name     string
		actual   int
		statSize int64
		wantErr  string
	}{
		{"exact", 100, 100, ""},
		{"exact empty", 0, 0, ""},
		{"exact buffer multiple", 2 * copyBufSize, 2 * copyBufSize, ""},
		{"shrunk", 100, 101, "before EOF"},
		{"shrunk to empty", 0, 5, "before EOF"},
		{"shrunk across buffers", copyBufSize + 10, 3 * copyBufSize, "before EOF"},
		{"grew", 101, 100, "grew"},
		{"grew from empty", 1, 0, "grew"},
		{"grew at buffer multiple", copyBufSize + 1, copyBufSize, "grew"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "f")
			data := randomBytes(tt.actual, 9)
			writeFile(t, path, data, 0o644)
			fd, err := openFile(path, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer syscall.Close(fd)
			var out bytes.Buffer
			d := dumper{w: bufio.NewWriterSize(&out, writeBufSize), buf: make([]byte, copyBufSize)}
			err = d.copyContents(fd, path, tt.statSize)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("copyContents: %v", err)
				}
				if err := d.w.Flush(); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(out.Bytes(), data) {
					t.Fatalf("copied %d bytes that differ from the %d-byte file", out.Len(), len(data))
				}
				return
			}
			if err == nil {
				t.Fatalf("copyContents succeeded; want an error containing %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), errSizeChanged) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %q; want it to name %s and contain %q", err, path, tt.wantErr)
			}
		})
	}
}

type failingWriter struct{ left int }

var errWriterFull = errors.New("writer full")

func (w *failingWriter) Write(p []byte) (int, error) {
	if len(p) > w.left {
		n := w.left
		w.left = 0
		return n, errWriterFull
	}
	w.left -= len(p)
	return len(p), nil
}

func TestDumpWriteError(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "big"), randomBytes(1<<20, 10), 0o644)
	for i := range 50 {
		writeFile(t, filepath.Join(dir, "small", fmt.Sprint(i)), []byte("x"), 0o644)
	}
	for _, limit := range []int{0, 100, writeBufSize + 1, 1 << 19} {
		t.Run(fmt.Sprint(limit), func(t *testing.T) {
			err := Dump(&failingWriter{left: limit}, dir)
			if !errors.Is(err, errWriterFull) {
				t.Fatalf("Dump to a writer failing after %d bytes = %v; want errWriterFull", limit, err)
			}
		})
	}
}

// Memory must not grow with file size: dumping a large file should allocate
// little more than the fixed buffers.
func TestDumpBoundedMemory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "big")
	const size = 32 << 20
	writeFile(t, path, randomBytes(size, 11), 0o644)

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	if err := Dump(io.Discard, path); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	const limit = 2 << 20
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > limit {
		t.Fatalf("Dump of a %d-byte file allocated %d bytes; want at most %d", size, alloc, limit)
	}
}

// makeBenchTree builds a tree shaped like a typical build output: a few
// large binaries plus many small files spread over directories, and
// returns its root.
func makeBenchTree(b *testing.B, dir string, largeFiles, largeSize, smallDirs, smallPerDir int) string {
	b.Helper()
	root := filepath.Join(dir, "root")
	for i := range largeFiles {
		p := filepath.Join(root, "bin", fmt.Sprintf("large-%d", i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(p, randomBytes(largeSize, uint64(i)), 0o755); err != nil {
			b.Fatal(err)
		}
	}
	for d := range smallDirs {
		sub := filepath.Join(root, "share", fmt.Sprintf("pkg-%03d", d))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			b.Fatal(err)
		}
		for f := range smallPerDir {
			size := 100 + (d*smallPerDir+f)*37%8000
			if err := os.WriteFile(filepath.Join(sub, fmt.Sprintf("file-%04d.txt", f)), randomBytes(size, uint64(f)), 0o644); err != nil {
				b.Fatal(err)
			}
		}
		if err := os.Symlink(fmt.Sprintf("file-%04d.txt", 0), filepath.Join(sub, "link")); err != nil {
			b.Fatal(err)
		}
	}
	return root
}

type countingWriter struct{ n int64 }

func (w *countingWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	return len(p), nil
}

func BenchmarkDump(b *testing.B) {
	cases := []struct {
		name                                          string
		largeFiles, largeSize, smallDirs, smallPerDir int
	}{
		{"large-files", 4, 32 << 20, 0, 0},
		{"small-files", 0, 0, 50, 100},
		{"mixed", 2, 32 << 20, 20, 100},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			root := makeBenchTree(b, b.TempDir(), c.largeFiles, c.largeSize, c.smallDirs, c.smallPerDir)
			var cw countingWriter
			if err := Dump(&cw, root); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(cw.n)
			b.ReportAllocs()
			for b.Loop() {
				if err := Dump(io.Discard, root); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
