package metrics

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/hearth-ci/hearth/config"
	"github.com/hearth-ci/hearth/filelock"
)

// MaxSpool is the size past which a spool takes no more events. It is reached only when no watcher
// drains it (cache watch stopped, or metrics turned on without one): events are then dropped
// rather than fill the state dir, which is usually a tmpfs. 8 MiB holds some 50,000 events.
const MaxSpool = 8 << 20

// ErrSpoolFull is returned by Record when the spool is at MaxSpool.
var ErrSpoolFull = errors.New("the metrics spool is full: is hearth cache watch running?")

// lockWait bounds how long a writer waits for the spool's lock, which the watcher holds only while
// it reads the file: a stage never waits on metrics for longer than this.
const lockWait = 2 * time.Second

// Spool is an append-only file of events, one JSON object a line. Writers and the drainer take the
// file's own lock, so a drain never loses a line a writer is adding: a writer that opened the
// file before a drain emptied it appends after the drain, at the new end.
type Spool struct {
	Path string
}

// Record appends evs to the spool, making it when missing.
func (s Spool) Record(evs ...Event) error {
	if len(evs) == 0 {
		return nil
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for _, e := range evs {
		if err := enc.Encode(e); err != nil {
			return fmt.Errorf("encode a metrics event: %w", err)
		}
	}
	// The dir above the spool's is the state dir, which job containers must be able to search:
	// made here first (by a watcher's push before any job), it must not be private.
	dir := filepath.Dir(s.Path)
	if err := searchableDir(filepath.Dir(dir)); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("make the metrics spool's dir: %w", err)
	}
	f, err := os.OpenFile(s.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open the metrics spool: %w", err)
	}
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), lockWait)
	defer cancel()
	if err := filelock.Lock(ctx, f); err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat the metrics spool: %w", err)
	}
	if fi.Size()+int64(buf.Len()) > MaxSpool {
		return fmt.Errorf("%s: %w", s.Path, ErrSpoolFull)
	}
	if _, err := f.Write(buf.Bytes()); err != nil {
		// A short write (a full tmpfs) would leave half a line for the next event to run into.
		f.Truncate(fi.Size())
		return fmt.Errorf("append to the metrics spool: %w", err)
	}
	return nil
}

// Drain takes every event the spool holds, leaving it empty, and calls apply on each in order. It
// returns how many lines could not be read as events, which are dropped: a line is written whole
// under the lock, and a failed write is cut off again, so only a tampered file (or a writer
// killed in the middle of its write) has them.
func (s Spool) Drain(ctx context.Context, apply func(Event)) (bad int, err error) {
	f, err := os.OpenFile(s.Path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("open the metrics spool: %w", err)
	}
	defer f.Close()
	if err := filelock.Lock(ctx, f); err != nil {
		return 0, err
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return 0, fmt.Errorf("read the metrics spool: %w", err)
	}
	if err := f.Truncate(0); err != nil {
		return 0, fmt.Errorf("empty the metrics spool: %w", err)
	}
	f.Close() // releases the lock before the events are applied
	for line := range bytes.Lines(data) {
		var e Event
		if err := json.Unmarshal(line, &e); err != nil || e.Kind == "" {
			bad++
			continue
		}
		apply(e)
	}
	return bad, nil
}

// Recorder records the events of one process into its host's spool, if metrics are on. Recording
// never fails what records: a stage does not fail because metrics could not be written, and
// OnError, when set, is told why.
type Recorder struct {
	spool   *Spool
	OnError func(error)
}

// NewRecorder records into path's spool; an empty path records nothing.
func NewRecorder(path string) *Recorder {
	if path == "" {
		return &Recorder{}
	}
	return &Recorder{spool: &Spool{Path: path}}
}

// Record appends evs to the spool.
func (r *Recorder) Record(evs ...Event) {
	if r == nil || r.spool == nil {
		return
	}
	if err := r.spool.Record(evs...); err != nil && r.OnError != nil {
		r.OnError(err)
	}
}

// RecorderFor records into the spool of cfg's host when cfg turns metrics on ([metrics] listen),
// and records nothing otherwise: with no watcher serving them, events would only fill the spool.
func RecorderFor(cfg *config.Config) *Recorder {
	if cfg.Metrics.Listen == "" {
		return NewRecorder("")
	}
	return NewRecorder(SpoolPath(cfg))
}

// searchableDir makes dir when it is missing, and makes it searchable by all whatever the umask,
// as the executor does with the state dir.
func searchableDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("make %s: %w", dir, err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if perm := fi.Mode().Perm(); perm&0o055 != 0o055 {
		if err := os.Chmod(dir, perm|0o755); err != nil {
			return fmt.Errorf("make %s searchable by job containers: %w", dir, err)
		}
	}
	return nil
}
