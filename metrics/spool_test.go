package metrics

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/hearth-ci/hearth/config"
)

// Writers in other goroutines (each with a file of its own, as separate processes have) append
// while the drainer empties the spool over and over: every event is applied exactly once.
func TestSpoolLosesNothingToConcurrentDrains(t *testing.T) {
	s := Spool{Path: filepath.Join(t.TempDir(), "metrics", "events")}
	const writers, each = 8, 200
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if err := s.Record(Event{Kind: KindPushed, Backend: "file", Bytes: int64(w*each + i)}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	seen := map[int64]int{}
	apply := func(e Event) { seen[e.Bytes]++ }
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	drains := 0
	for running := true; running; drains++ {
		select {
		case <-done:
			running = false
		default:
		}
		if bad, err := s.Drain(context.Background(), apply); err != nil || bad != 0 {
			t.Fatalf("drain: %d bad lines, %v", bad, err)
		}
	}
	if len(seen) != writers*each {
		t.Fatalf("%d distinct events applied after %d drains, want %d", len(seen), drains, writers*each)
	}
	for b, n := range seen {
		if n != 1 {
			t.Fatalf("event %d applied %d times", b, n)
		}
	}
	if fi, err := os.Stat(s.Path); err != nil || fi.Size() != 0 {
		t.Fatalf("the spool is not empty after the last drain: %v %v", fi, err)
	}
}

func TestSpoolDrain(t *testing.T) {
	for _, tc := range []struct {
		name, content string
		want          []string // kinds applied
		bad           int
	}{
		{"missing", "", nil, 0},
		{"events", `{"kind":"stage","stage":"prepare"}` + "\n" + `{"kind":"deploy","target":"a"}` + "\n", []string{"stage", "deploy"}, 0},
		{"bad lines dropped", "not json\n" + `{"stage":"no kind"}` + "\n" + `{"kind":"pushed"}` + "\n", []string{"pushed"}, 2},
		{"no final newline", `{"kind":"pushed"}`, []string{"pushed"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := Spool{Path: filepath.Join(t.TempDir(), "events")}
			if tc.content != "" {
				if err := os.WriteFile(s.Path, []byte(tc.content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			var got []string
			bad, err := s.Drain(context.Background(), func(e Event) { got = append(got, e.Kind) })
			if err != nil || bad != tc.bad || fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("applied %v with %d bad lines (%v), want %v and %d", got, bad, err, tc.want, tc.bad)
			}
		})
	}
}

// A spool nobody drains stops at MaxSpool rather than fill the state dir.
func TestSpoolFull(t *testing.T) {
	s := Spool{Path: filepath.Join(t.TempDir(), "events")}
	if err := os.WriteFile(s.Path, []byte(strings.Repeat("x", MaxSpool-10)), 0o600); err != nil {
		t.Fatal(err)
	}
	err := s.Record(Event{Kind: KindStage, Stage: "prepare"})
	if !errors.Is(err, ErrSpoolFull) {
		t.Fatalf("Record on a full spool: %v", err)
	}
	if fi, _ := os.Stat(s.Path); fi.Size() != MaxSpool-10 {
		t.Fatalf("the full spool grew to %d bytes", fi.Size())
	}
	var got error
	r := NewRecorder(s.Path)
	r.OnError = func(err error) { got = err }
	r.Record(Event{Kind: KindStage})
	if !errors.Is(got, ErrSpoolFull) {
		t.Fatalf("the recorder did not report the full spool: %v", got)
	}
}

// With [metrics] listen unset, stages spool nothing (no watcher would drain it); set, they spool
// into the state dir.
func TestRecorderFor(t *testing.T) {
	for _, listen := range []string{"", "127.0.0.1:9863"} {
		cfg := config.Default()
		cfg.Jobs.StateDir = filepath.Join(t.TempDir(), "state") // not made yet, as on a fresh host
		cfg.Metrics.Listen = listen
		RecorderFor(&cfg).Record(Event{Kind: KindStage, Stage: "prepare"})
		_, err := os.Stat(SpoolPath(&cfg))
		if spooled := err == nil; spooled != (listen != "") {
			t.Errorf("listen %q: spooled %v (%v)", listen, spooled, err)
		}
		if listen == "" {
			continue
		}
		// The spool made the state dir: job containers must still be able to search it.
		for dir, want := range map[string]os.FileMode{cfg.Jobs.StateDir: 0o755, filepath.Dir(SpoolPath(&cfg)): 0o700} {
			if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != want {
				t.Errorf("%s: %v, %v; want mode %o", dir, fi.Mode(), err, want)
			}
		}
	}
	var nilRec *Recorder
	nilRec.Record(Event{Kind: KindStage}) // a driver without metrics has none: no panic
}
