package cache

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/hearth-ci/hearth/nix"
)

// FuzzReadEntry feeds arbitrary bytes to the queue entry reader: the queue dir is written by the
// daemon's hook, and a corrupt entry must be an error, never a panic or a path outside the store.
// An entry that Add wrote always reads back as written.
func FuzzReadEntry(f *testing.F) {
	f.Add([]byte(entryHeader + "\nout /nix/store/00000000000000000000000000000000-a\n"))
	f.Add([]byte(entryHeader + "\ndrv /nix/store/00000000000000000000000000000000-a.drv\n"))
	f.Add([]byte("hearth-queue 2\nout /etc/passwd\n"))
	f.Add([]byte(entryHeader + "\nout /nix/store/../etc\n"))
	f.Add([]byte(""))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(dir, "entry"+entrySuffix)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		file, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer file.Close()
		e, err := readEntry(file, p)
		if err != nil {
			return
		}
		for _, o := range append(append([]string{}, e.Outputs...), e.Drv) {
			if o != "" && nix.CheckStorePath(o) != nil {
				t.Fatalf("accepted an entry naming %q, not a store path", o)
			}
		}
		// What was read, written again by Add, reads back the same.
		q := Queue{Dir: filepath.Join(dir, "q")}
		os.RemoveAll(q.Dir)
		if len(e.Outputs) == 0 && e.Drv == "" {
			return
		}
		if err := q.Add(e.Outputs, e.Drv); err != nil {
			t.Fatal(err)
		}
		names, _ := filepath.Glob(filepath.Join(q.Dir, "*"+entrySuffix))
		g, _ := os.Open(names[0])
		defer g.Close()
		again, err := readEntry(g, names[0])
		if err != nil || len(again.Outputs) != len(e.Outputs) || (len(e.Outputs) == 0 && again.Drv != e.Drv) {
			t.Fatalf("entry %+v written again reads %+v, %v", e, again, err)
		}
	})
}
