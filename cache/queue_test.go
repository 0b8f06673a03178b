package cache

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestQueueAddTakeDone(t *testing.T) {
	q := Queue{Dir: filepath.Join(t.TempDir(), "queue")}
	if err := q.Add([]string{"/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a", "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b"}, "/nix/store/cccccccccccccccccccccccccccccccc-c.drv"); err != nil {
		t.Fatal(err)
	}
	// Nix 2.8 leaves OUT_PATHS empty: the derivation is queued instead.
	if err := q.Add(nil, "/nix/store/dddddddddddddddddddddddddddddddd-d.drv"); err != nil {
		t.Fatal(err)
	}
	if err := q.Add(nil, ""); err != nil {
		t.Fatal(err)
	}
	b, err := q.Take(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Entries) != 2 || len(b.Corrupt) != 0 {
		t.Fatalf("took %+v", b)
	}
	if got := b.Entries[0].Outputs; len(got) != 2 || b.Entries[0].Drv != "" {
		t.Fatalf("first entry %+v: outputs named by Nix are what is queued", b.Entries[0])
	}
	if b.Entries[1].Drv != "/nix/store/dddddddddddddddddddddddddddddddd-d.drv" || len(b.Entries[1].Outputs) != 0 {
		t.Fatalf("second entry %+v", b.Entries[1])
	}
	// A second drainer finds nothing to take while the first holds the entries.
	b2, err := q.Take(context.Background())
	if err != nil || len(b2.Entries) != 0 {
		t.Fatalf("a second drainer took %+v (%v)", b2, err)
	}
	b.Release()
	b3, err := q.Take(context.Background())
	if err != nil || len(b3.Entries) != 2 {
		t.Fatalf("after release: %+v (%v)", b3, err)
	}
	if err := b3.Done(); err != nil {
		t.Fatal(err)
	}
	left, _ := filepath.Glob(filepath.Join(q.Dir, "*"))
	if len(left) != 0 {
		t.Fatalf("entries left after Done: %v", left)
	}
}

func TestQueueCorruptEntriesStay(t *testing.T) {
	q := Queue{Dir: t.TempDir()}
	for name, content := range map[string]string{
		"1-empty.paths":   "",
		"2-header.paths":  "not a queue\n",
		"3-garbage.paths": "hearth-queue 1\nout /nix/store/x y\n",
		"4-kind.paths":    "hearth-queue 1\nbuilt /nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a\n",
	} {
		if err := os.WriteFile(filepath.Join(q.Dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.Add([]string{"/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a"}, ""); err != nil {
		t.Fatal(err)
	}
	b, err := q.Take(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Entries) != 1 || len(b.Corrupt) != 4 {
		t.Fatalf("entries %d, corrupt %v", len(b.Entries), b.Corrupt)
	}
	for _, c := range b.Corrupt {
		if !strings.Contains(c.Error(), q.Dir) || !strings.Contains(c.Error(), "stays in the queue") {
			t.Errorf("error does not name the entry and what happens to it: %v", c)
		}
	}
	if err := b.Done(); err != nil {
		t.Fatal(err)
	}
	left, _ := filepath.Glob(filepath.Join(q.Dir, "*.paths"))
	if len(left) != 4 {
		t.Fatalf("corrupt entries were dropped: %v", left)
	}
}

func TestQueueBrokenDir(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := (Queue{Dir: f}).Add([]string{"/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a"}, ""); err == nil {
		t.Fatal("queueing into a file succeeded")
	}
}

// What is queued is rooted until it is pushed: outputs Nix named, or those its derivation names.
func TestQueueRootsUntilPushed(t *testing.T) {
	dir := t.TempDir()
	q := Queue{Dir: filepath.Join(dir, "queue"), RootsDir: filepath.Join(dir, "roots")}
	a := "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a"
	if err := q.Add([]string{a}, ""); err != nil {
		t.Fatal(err)
	}
	// A derivation file read from where the hook says it is (not a store path here: the test
	// has no store to write to).
	drv := filepath.Join(dir, "d.drv")
	d := "/nix/store/dddddddddddddddddddddddddddddddd-d"
	if err := os.WriteFile(drv, []byte(`Derive([("out","`+d+`","","")],[],[],"x86_64-linux","/bin/sh",[],[])`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := q.Add(nil, drv); err != nil {
		t.Fatal(err)
	}
	links, _ := filepath.Glob(filepath.Join(q.RootsDir, "*", "*"))
	var targets []string
	for _, l := range links {
		target, err := os.Readlink(l)
		if err != nil {
			t.Fatal(err)
		}
		targets = append(targets, target)
	}
	if strings.Join(targets, " ") != a+" "+d && strings.Join(targets, " ") != d+" "+a {
		t.Fatalf("roots point at %v, want %s and %s", targets, a, d)
	}
	b, err := q.Take(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// Taken (a push in progress) is not pushed: the roots stay.
	if left, _ := filepath.Glob(filepath.Join(q.RootsDir, "*")); len(left) != 2 {
		t.Fatalf("roots while the push runs: %v", left)
	}
	if err := b.finish(0); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(q.RootsDir, "*")); len(left) != 1 {
		t.Fatalf("roots after one entry was pushed: %v, want the other's only", left)
	}
	b.Release()
}

// Roots of entries no longer queued (a crash between rooting and queueing, or between pushing
// and unrooting) are removed by GCRoots once old; those of queued entries stay.
func TestQueueGCRoots(t *testing.T) {
	dir := t.TempDir()
	q := Queue{Dir: filepath.Join(dir, "queue"), RootsDir: filepath.Join(dir, "roots")}
	if err := q.Add([]string{"/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a"}, ""); err != nil {
		t.Fatal(err)
	}
	orphan := filepath.Join(q.RootsDir, "1-2-orphan")
	fresh := filepath.Join(q.RootsDir, "3-4-fresh")
	for _, d := range []string{orphan, fresh} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-time.Hour)
	os.Chtimes(orphan, old, old)
	queued, _ := filepath.Glob(filepath.Join(q.RootsDir, "*"))
	for _, d := range queued {
		os.Chtimes(d, old, old)
	}
	os.Chtimes(fresh, time.Now(), time.Now())
	removed, err := q.GCRoots()
	if err != nil || len(removed) != 1 || removed[0] != "1-2-orphan" {
		t.Fatalf("GCRoots removed %v (%v), want the orphan only", removed, err)
	}
	left, _ := filepath.Glob(filepath.Join(q.RootsDir, "*"))
	if len(left) != 2 {
		t.Fatalf("left %v, want the queued entry's roots and the fresh ones", left)
	}
}
