// Package cachetest is the conformance suite every cache backend passes: run it from the backend's
// own test with a factory for fresh caches. It pushes real store paths, made by a real nix-daemon,
// and has real Nix substitute them back.
package cachetest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/hearth-ci/hearth/cache"
	"github.com/hearth-ci/hearth/internal/testenv"
	"github.com/hearth-ci/hearth/nix/nar"
	"github.com/hearth-ci/hearth/nixstore"
)

// Instance is one fresh, empty cache.
type Instance struct {
	Backend cache.Backend
	// Substituter is the URL Nix substitutes from; PublicKey the key its narinfos are signed with.
	Substituter, PublicKey string
	// Tamper changes the stored NAR of a store path (one byte of it), as corruption would.
	Tamper func(t *testing.T, storePath string)
	// Stored lists what the cache keeps apart from nix-cache-info — objects, files, parts of
	// unfinished uploads — so that the suite can see what a refused upload left behind.
	Stored func(t *testing.T) []string
}

// Run runs the suite. fresh returns a new empty cache each time it is called.
func Run(t *testing.T, parts *testenv.Parts, fresh func(t *testing.T) Instance) {
	ctx := context.Background()
	store := nixstore.Daemon(parts.NixSocket)
	pusher := func(b cache.Backend) *cache.Pusher {
		return &cache.Pusher{Backend: b, Store: store, Uploads: 3, LockDir: t.TempDir()}
	}

	t.Run("push a closure, then nothing more", func(t *testing.T) {
		in := fresh(t)
		chain, err := parts.BuildChain(fmt.Sprint("suite-", time.Now().UnixNano()), 3)
		if err != nil {
			t.Fatal(err)
		}
		top := chain[len(chain)-1]
		infos, err := store.Closure(ctx, []string{top})
		if err != nil {
			t.Fatal(err)
		}
		missing, err := in.Backend.Missing(ctx, infos)
		if err != nil {
			t.Fatal(err)
		}
		if len(missing) != len(infos) {
			t.Fatalf("an empty cache says it lacks %d of %d paths", len(missing), len(infos))
		}
		sum, err := pusher(in.Backend).Push(ctx, []string{top}, cache.Closures)
		if err != nil {
			t.Fatal(err)
		}
		if sum.Pushed != len(infos) || sum.Present != 0 || sum.NarBytes <= 0 {
			t.Fatalf("first push: %+v, want %d pushed", sum, len(infos))
		}
		if missing, err = in.Backend.Missing(ctx, infos); err != nil || len(missing) != 0 {
			t.Fatalf("after the push the cache lacks %v (%v)", missing, err)
		}
		sum, err = pusher(in.Backend).Push(ctx, []string{top}, cache.Closures)
		if err != nil {
			t.Fatal(err)
		}
		if sum.Pushed != 0 || sum.Present != len(infos) {
			t.Fatalf("re-push uploaded something: %+v", sum)
		}

		// Real Nix, with an empty store, takes the closure from the cache trusting only its key.
		root, err := parts.Substitute(in.Substituter, in.PublicKey, top)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range chain {
			if err := sameTree(root+p, p); err != nil {
				t.Fatalf("substituted %s differs: %v", p, err)
			}
		}
		// With a key it does not trust, it refuses.
		if _, err := parts.Substitute(in.Substituter, "other-key-1:QbBbnHDtJkm0Q3BkOKZJMnJZOSdKIMXGgQ0PfUjVNpE=", top); err == nil {
			t.Fatal("Nix substituted paths signed by a key it does not trust")
		}
	})

	t.Run("a tampered NAR is refused by Nix", func(t *testing.T) {
		in := fresh(t)
		chain, err := parts.BuildChain(fmt.Sprint("tamper-", time.Now().UnixNano()), 1)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pusher(in.Backend).Push(ctx, chain, cache.Closures); err != nil {
			t.Fatal(err)
		}
		in.Tamper(t, chain[0])
		_, err = parts.Substitute(in.Substituter, in.PublicKey, chain[0])
		if err == nil {
			t.Fatal("Nix accepted a tampered NAR")
		}
		if !strings.Contains(err.Error(), "hash mismatch") {
			t.Fatalf("Nix refused the path, but not for its hash: %v", err)
		}
	})

	t.Run("a NAR that differs from the store's record is never uploaded", func(t *testing.T) {
		in := fresh(t)
		// Large enough for S3's multipart upload, whose abort must then leave no parts behind.
		big, err := parts.AddRandom(fmt.Sprint("mismatch-", time.Now().UnixNano()), 21<<20)
		if err != nil {
			t.Fatal(err)
		}
		infos, err := store.Info(ctx, []string{big})
		if err != nil {
			t.Fatal(err)
		}
		wrong := infos[0]
		wrong.NarHash = "sha256:" + strings.Repeat("0", 52)
		_, err = in.Backend.Put(ctx, wrong, cache.NarOf(wrong))
		if !errors.Is(err, cache.ErrNarMismatch) {
			t.Fatalf("Put of a mismatched NAR: %v, want ErrNarMismatch", err)
		}
		if missing, err := in.Backend.Missing(ctx, infos); err != nil || len(missing) != 1 {
			t.Fatalf("after a refused upload the cache holds the path (missing %v, %v)", missing, err)
		}
		if left := in.Stored(t); len(left) > 0 {
			t.Fatalf("a refused upload left %v in the cache", left)
		}
		// Control: the same path with the store's true record is stored, and Stored sees it, so
		// the check above can fail.
		if _, err := in.Backend.Put(ctx, infos[0], cache.NarOf(infos[0])); err != nil {
			t.Fatal(err)
		}
		if left := in.Stored(t); len(left) == 0 {
			t.Fatal("control: Stored sees nothing after an upload that succeeded")
		}
	})

	t.Run("prune keeps what is recent, what is kept, and their closures", func(t *testing.T) {
		in := fresh(t)
		p, ok := in.Backend.(cache.Pruner)
		if !ok {
			t.Skip("this backend collects its own garbage")
		}
		nonce := fmt.Sprint(time.Now().UnixNano())
		kept, err := parts.BuildChain("prune-kept-"+nonce, 3)
		if err != nil {
			t.Fatal(err)
		}
		gone, err := parts.BuildChain("prune-gone-"+nonce, 2)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pusher(in.Backend).Push(ctx, []string{kept[2], gone[1]}, cache.Closures); err != nil {
			t.Fatal(err)
		}
		stored := in.Stored(t)
		same := func(what string) {
			t.Helper()
			if now := in.Stored(t); strings.Join(now, " ") != strings.Join(stored, " ") {
				t.Fatalf("%s changed the cache: %v, was %v", what, now, stored)
			}
		}
		// Nothing was pushed before an hour ago: nothing goes.
		sum, err := p.Prune(ctx, cache.PruneRequest{Before: time.Now().Add(-time.Hour)})
		if err != nil || sum.Paths != 0 || sum.NARs != 0 || sum.Kept != 5 {
			t.Fatalf("prune of nothing old: %+v, %v", sum, err)
		}
		same("a prune of nothing old")
		// Everything is older than an hour from now; kept[2] is kept, and what it references. A
		// NAR is named by its hash, so identical bytes share one: gone[0] has the same contents as
		// kept[0] (the first link of each chain), and its NAR stays.
		infos, err := store.Closure(ctx, []string{kept[2]})
		if err != nil {
			t.Fatal(err)
		}
		goneInfos, err := store.Info(ctx, gone)
		if err != nil {
			t.Fatal(err)
		}
		keptNars := map[string]bool{}
		for _, in := range infos {
			keptNars[in.NarHash] = true
		}
		nars := 0
		for _, in := range goneInfos {
			if !keptNars[in.NarHash] {
				nars++
			}
		}
		if nars != 1 {
			t.Fatalf("the test expects gone[0] to share kept[0]'s NAR, and gone[1] not: %d NARs of its own", nars)
		}
		req := cache.PruneRequest{Before: time.Now().Add(time.Hour), Keep: []string{kept[2]}, DryRun: true}
		if sum, err = p.Prune(ctx, req); err != nil || sum.Paths != 2 || sum.NARs != nars || sum.Kept != 3 || sum.Bytes <= 0 {
			t.Fatalf("dry prune: %+v, %v", sum, err)
		}
		same("a dry prune")
		req.DryRun = false
		if sum, err = p.Prune(ctx, req); err != nil || sum.Paths != 2 || sum.NARs != nars || sum.Kept != 3 {
			t.Fatalf("prune: %+v, %v", sum, err)
		}
		if missing, err := in.Backend.Missing(ctx, infos); err != nil || len(missing) != 0 {
			t.Fatalf("prune removed %v of a kept closure (%v)", missing, err)
		}
		if missing, err := in.Backend.Missing(ctx, goneInfos); err != nil || len(missing) != 2 {
			t.Fatalf("after the prune the cache lacks %v of %v (%v)", missing, gone, err)
		}
		if left := in.Stored(t); len(left) != len(stored)-2-nars {
			t.Fatalf("the prune left %v, of %v before", left, stored)
		}
		// Real Nix still substitutes the kept closure.
		root, err := parts.Substitute(in.Substituter, in.PublicKey, kept[2])
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range kept {
			if err := sameTree(root+k, k); err != nil {
				t.Fatalf("substituted %s differs: %v", k, err)
			}
		}
	})

	t.Run("a large path", func(t *testing.T) {
		in := fresh(t)
		big, err := parts.AddRandom(fmt.Sprint("big-", time.Now().UnixNano()), 21<<20)
		if err != nil {
			t.Fatal(err)
		}
		sum, err := pusher(in.Backend).Push(ctx, []string{big}, cache.PathsOnly)
		if err != nil {
			t.Fatal(err)
		}
		if sum.Pushed != 1 || sum.NarBytes < 21<<20 {
			t.Fatalf("push: %+v", sum)
		}
		root, err := parts.Substitute(in.Substituter, in.PublicKey, big)
		if err != nil {
			t.Fatal(err)
		}
		if err := sameTree(root+big, big); err != nil {
			t.Fatal(err)
		}
	})
}

// FilesUnder lists the regular files below dir, relative to it, but nix-cache-info: what a cache
// kept as files holds.
func FilesUnder(t *testing.T, dir string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && d.Name() != "nix-cache-info" {
			rel, _ := filepath.Rel(dir, p)
			files = append(files, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// sameTree compares two store paths file by file.
func sameTree(got, want string) error {
	var a, b strings.Builder
	if err := narString(&a, got); err != nil {
		return err
	}
	if err := narString(&b, want); err != nil {
		return err
	}
	if a.String() != b.String() {
		return fmt.Errorf("%s and %s have different contents", got, want)
	}
	return nil
}

func narString(w io.Writer, path string) error {
	return nar.Dump(w, path)
}

// TamperZstd rewrites a zstd-compressed NAR with one byte of its content changed and returns it
// compressed again: it still decompresses, and only the NAR hash gives it away.
func TamperZstd(t *testing.T, compressed []byte) []byte {
	t.Helper()
	d, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := d.DecodeAll(compressed, nil)
	d.Close()
	if err != nil {
		t.Fatal(err)
	}
	TamperPlain(plain)
	e, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	return e.EncodeAll(plain, nil)
}

// TamperPlain changes the first byte of the first non-empty file in an uncompressed NAR, in
// place: the NAR stays well-formed, and only its hash gives it away.
func TamperPlain(nar []byte) {
	marker := []byte("contents")
	for off := 0; ; {
		i := bytes.Index(nar[off:], marker)
		if i < 0 {
			panic("cachetest: no file contents in the NAR to tamper with")
		}
		start := off + i + len(marker) // then the contents' 8-byte length, then the bytes
		if n := binary.LittleEndian.Uint64(nar[start : start+8]); n > 0 {
			nar[start+8] ^= 0x20
			return
		}
		off = start
	}
}
